//! A scripted fake broker for the actor tests: it listens on a loopback port, and each
//! test drives one connection packet by packet, with every wait bounded.

#![allow(dead_code)]

use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use actix::prelude::*;
use bytes::BytesMut;
use mqttlink::codec::{
    encode, ConnAck, Connect, ConnectReason, Decoder, Disconnect, DisconnectReason, Packet,
    Properties, ProtocolVersion,
};
use mqttlink::{live_actor_count, Event};
use nix::errno::Errno;
use nix::sys::socket::{recv, MsgFlags};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Longest wait for any single step of a script.
pub const STEP: Duration = Duration::from_secs(5);

/// A listening fake broker.
pub struct FakeBroker {
    listener: TcpListener,
}

impl FakeBroker {
    /// Listens on 127.0.0.1 at a free port.
    pub async fn bind() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        Self { listener }
    }

    /// Returns the `mqtt://` URL of this broker.
    pub fn url(&self) -> String {
        let port = self.listener.local_addr().expect("local address").port();
        format!("mqtt://127.0.0.1:{port}")
    }

    /// Accepts the next client connection.
    pub async fn accept(&self) -> BrokerConnection {
        let (stream, _) = tokio::time::timeout(STEP, self.listener.accept())
            .await
            .expect("client connects in time")
            .expect("accept");
        BrokerConnection {
            stream,
            decoder: Decoder::for_server(),
            buf: BytesMut::new(),
        }
    }
}

/// One client connection, seen from the broker.
pub struct BrokerConnection {
    stream: TcpStream,
    decoder: Decoder,
    buf: BytesMut,
}

impl BrokerConnection {
    /// Returns the next packet from the client, or `None` when it closed the connection.
    pub async fn next(&mut self) -> Option<Packet> {
        loop {
            if let Some(packet) = self
                .decoder
                .decode(&mut self.buf)
                .expect("client sends valid packets")
            {
                return Some(packet);
            }
            let read = tokio::time::timeout(STEP, self.stream.read_buf(&mut self.buf))
                .await
                .expect("client sends or closes in time");
            match read {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Returns the next packet, failing the test if the connection closed.
    pub async fn recv(&mut self) -> Packet {
        self.next()
            .await
            .expect("client sends a packet before closing")
    }

    /// Expects CONNECT and returns it.
    pub async fn expect_connect(&mut self) -> Connect {
        match self.recv().await {
            Packet::Connect(connect) => *connect,
            other => panic!("expected CONNECT, got {other:?}"),
        }
    }

    /// Expects CONNECT, answers with a successful CONNACK, and returns the CONNECT.
    pub async fn handshake(&mut self) -> Connect {
        self.handshake_with(Properties::default()).await
    }

    /// Sends CONNACK with `reason` and `properties`.
    pub async fn connack(&mut self, reason: ConnectReason, properties: Properties) {
        let connack = ConnAck {
            session_present: false,
            reason,
            properties: properties.into(),
        };
        self.send(&Packet::ConnAck(connack)).await;
    }

    /// Expects CONNECT and replies with a successful CONNACK carrying `properties`.
    pub async fn handshake_with(&mut self, properties: Properties) -> Connect {
        let connect = self.expect_connect().await;
        self.connack(ConnectReason::Success, properties).await;
        connect
    }

    /// Returns the protocol version of the client's CONNECT, MQTT 5 before it arrived.
    pub fn version(&self) -> ProtocolVersion {
        self.decoder.version().unwrap_or(ProtocolVersion::V5)
    }

    /// Returns the bytes of a successful CONNACK with `properties`.
    pub fn connack_bytes(&self, properties: Properties) -> BytesMut {
        self.encode(&Packet::ConnAck(ConnAck {
            session_present: false,
            reason: ConnectReason::Success,
            properties: properties.into(),
        }))
    }

    /// Encodes one packet for the version of the client's CONNECT.
    pub fn encode(&self, packet: &Packet) -> BytesMut {
        let mut out = BytesMut::new();
        encode(packet, self.version(), u32::MAX, &mut out).expect("test packet encodes");
        out
    }

    /// Sends one packet, encoded for the version of the client's CONNECT.
    pub async fn send(&mut self, packet: &Packet) {
        let bytes = self.encode(packet);
        self.send_raw(&bytes).await;
    }

    /// Sends raw bytes.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        tokio::time::timeout(STEP, self.stream.write_all(bytes))
            .await
            .expect("write in time")
            .expect("write");
    }

    /// Sends raw bytes, returning whether the client still took them.
    pub async fn try_send_raw(&mut self, bytes: &[u8]) -> bool {
        matches!(
            tokio::time::timeout(STEP, self.stream.write_all(bytes)).await,
            Ok(Ok(()))
        )
    }

    /// Shuts down the broker's sending side, so the client reads end of stream.
    pub async fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown().await;
    }

    /// Reads until the client closes the connection and returns the packets it sent
    /// before closing.
    pub async fn until_closed(&mut self) -> Vec<Packet> {
        let mut packets = Vec::new();
        while let Some(packet) = self.next().await {
            packets.push(packet);
        }
        packets
    }

    /// Reads until the client closes the connection and fails the test unless the last
    /// packet it sent is DISCONNECT with `reason`.
    pub async fn expect_disconnect_with(&mut self, reason: DisconnectReason) {
        let packets = self.until_closed().await;
        match packets.last() {
            Some(Packet::Disconnect(Disconnect { reason: sent, .. })) => {
                assert_eq!(*sent, reason, "DISCONNECT reason; client sent {packets:?}");
            }
            _ => panic!("expected DISCONNECT {reason:?} before close, client sent {packets:?}"),
        }
    }

    /// Returns the descriptor of this side of the connection, for [`Self::unread_at`]
    /// called where the connection itself is out of reach, such as in an actor.
    pub fn raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Returns how many bytes wait unread on the socket `fd`, up to 64, without
    /// waiting for more or consuming them.
    pub fn unread_at(fd: RawFd) -> usize {
        let mut peeked = [0_u8; 64];
        let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
        match recv(fd, &mut peeked, flags) {
            Ok(count) => count,
            Err(Errno::EAGAIN) => 0,
            Err(error) => panic!("peek at the broker's socket failed: {error}"),
        }
    }

    /// Resets the connection: closes it with SO_LINGER 0, so the client reads an RST.
    pub fn reset(self) {
        let _ = self.stream.set_zero_linger();
        drop(self.stream);
    }
}

/// Forwards everything it receives into a channel the test reads.
pub struct Forward<T>(pub mpsc::UnboundedSender<T>);

impl<T: Unpin + 'static> Actor for Forward<T> {
    type Context = Context<Self>;
}

impl Handler<mqttlink::Message> for Forward<mqttlink::Message> {
    type Result = ();
    fn handle(&mut self, message: mqttlink::Message, _: &mut Context<Self>) {
        let _ = self.0.send(message);
    }
}

impl Handler<Event> for Forward<Event> {
    type Result = ();
    fn handle(&mut self, event: Event, _: &mut Context<Self>) {
        let _ = self.0.send(event);
    }
}

/// Starts a forwarding actor and returns it with the receiving end of its channel.
pub fn forward<T: Unpin + 'static>() -> (Addr<Forward<T>>, mpsc::UnboundedReceiver<T>)
where
    Forward<T>: Actor<Context = Context<Forward<T>>>,
{
    let (sender, receiver) = mpsc::unbounded_channel();
    (Forward(sender).start(), receiver)
}

/// A recipient with a mailbox of one message whose handler blocks on the first message
/// until the test releases it, so later messages wait for room in its mailbox.
pub struct Gate {
    release: Option<tokio::sync::oneshot::Receiver<()>>,
    seen: mpsc::UnboundedSender<bytes::Bytes>,
}

impl Gate {
    /// Starts a gate and returns its address, the sender that releases it, and the
    /// channel of the payloads it handles, in order.
    pub fn start_closed() -> (
        Addr<Gate>,
        tokio::sync::oneshot::Sender<()>,
        mpsc::UnboundedReceiver<bytes::Bytes>,
    ) {
        let (release, released) = tokio::sync::oneshot::channel();
        let (seen, seen_rx) = mpsc::unbounded_channel();
        let gate = Gate {
            release: Some(released),
            seen,
        }
        .start();
        (gate, release, seen_rx)
    }
}

impl Actor for Gate {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(1);
    }
}

impl Handler<mqttlink::Message> for Gate {
    type Result = ();

    fn handle(&mut self, message: mqttlink::Message, ctx: &mut Context<Self>) {
        let _ = self.seen.send(message.payload);
        if let Some(release) = self.release.take() {
            ctx.wait(async move { drop(release.await) }.into_actor(self));
        }
    }
}

/// Returns the next item of a channel, failing the test after `STEP`.
pub async fn next<T>(receiver: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(STEP, receiver.recv())
        .await
        .expect("item arrives in time")
        .expect("channel open")
}

/// Waits, yielding to the actors, until the live actor count is back at `baseline`.
pub async fn assert_actors_back_to(baseline: usize) {
    let settled = async {
        while live_actor_count() != baseline {
            tokio::task::yield_now().await;
        }
    };
    let result = tokio::time::timeout(STEP, settled).await;
    assert!(
        result.is_ok(),
        "live actors {} did not return to {baseline}",
        live_actor_count()
    );
}
