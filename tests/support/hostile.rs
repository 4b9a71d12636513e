//! A fake broker for hostile-broker tests: it listens on 127.0.0.1 port 0, decodes what
//! the client sends with the crate's server-side decoder, and writes whatever bytes a
//! test requests, valid MQTT or not. Every wait is bounded by `STEP`.
//!
//! It also takes a snapshot of what a client can leak (live actors, tokio tasks, open
//! file descriptors) and waits, bounded, for the counts to return to it.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::time::Duration;

use actix::prelude::*;
use bytes::BytesMut;
use mqttlink::codec::{
    encode, ConnAck, Connect, ConnectReason, Decoder, Disconnect, DisconnectReason, Packet,
    Properties, ProtocolVersion,
};
use mqttlink::{live_actor_count, Event};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Maximum wait for any single step of a script.
pub const STEP: Duration = Duration::from_secs(5);

/// A listening fake broker.
pub struct Hostile {
    listener: TcpListener,
}

impl Hostile {
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
    pub async fn accept(&self) -> Peer {
        let (stream, _) = tokio::time::timeout(STEP, self.listener.accept())
            .await
            .expect("client connects in time")
            .expect("accept");
        Peer {
            stream,
            decoder: Decoder::for_server(),
            buf: BytesMut::new(),
        }
    }
}

/// One client connection, seen from the broker.
pub struct Peer {
    stream: TcpStream,
    decoder: Decoder,
    buf: BytesMut,
}

impl Peer {
    /// Returns the next packet from the client, or `None` when the client closed or reset
    /// the connection.
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

    /// Returns the protocol version of the client's CONNECT, MQTT 5 before it arrived.
    pub fn version(&self) -> ProtocolVersion {
        self.decoder.version().unwrap_or(ProtocolVersion::V5)
    }

    /// Returns the bytes of CONNACK with `properties`.
    pub fn connack_bytes(&self, properties: Properties) -> BytesMut {
        self.encode(&Packet::ConnAck(ConnAck {
            session_present: false,
            reason: ConnectReason::Success,
            properties,
        }))
    }

    /// Expects CONNECT and replies with a successful CONNACK carrying `properties`.
    pub async fn handshake(&mut self, properties: Properties) -> Connect {
        let connect = self.expect_connect().await;
        let connack = self.connack_bytes(properties);
        self.send_raw(&connack).await;
        connect
    }

    /// Encodes one packet for the version of the client's CONNECT.
    pub fn encode(&self, packet: &Packet) -> BytesMut {
        let mut out = BytesMut::new();
        encode(packet, self.version(), u32::MAX, &mut out).expect("test packet encodes");
        out
    }

    /// Sends one packet.
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

    /// Resets the connection: closes it with SO_LINGER 0, so the client reads an RST.
    pub fn reset(self) {
        let _ = self.stream.set_zero_linger();
        drop(self.stream);
    }
}

/// Forwards everything it receives into a channel the test reads.
pub struct Forward<T>(mpsc::UnboundedSender<T>);

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

/// Returns the next item of a channel, failing the test after `STEP`.
pub async fn next<T>(receiver: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(STEP, receiver.recv())
        .await
        .expect("item arrives in time")
        .expect("channel open")
}

/// What a client can leave behind: mqttlink actors, tokio tasks and open sockets of this
/// process. The task count covers tasks spawned on the runtime itself. Actix actors run
/// on the System's `LocalSet`, which tokio's runtime metrics do not count.
///
/// Sockets are compared by inode, not by descriptor count, because tests waiting for the
/// serial lock open runtimes (epoll and eventfd descriptors, and duplicates of sockets
/// the harness inherited) at any moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resources {
    pub actors: usize,
    pub tasks: usize,
    pub sockets: BTreeSet<String>,
}

impl Resources {
    /// Counts the resources in use now.
    pub fn now() -> Self {
        Self {
            actors: live_actor_count(),
            tasks: tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks(),
            sockets: open_sockets(),
        }
    }

    /// Waits, yielding to the actors, until no count is above this snapshot and every
    /// socket opened since is closed. Fails the test with what remains after `STEP`.
    pub async fn assert_back(self) {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let now = Self::now();
            let new_sockets: Vec<&String> = now.sockets.difference(&self.sockets).collect();
            if now.actors <= self.actors && now.tasks <= self.tasks && new_sockets.is_empty() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} actors and {} tasks (expected at most {} and {}), sockets still open: {new_sockets:?}",
                now.actors,
                now.tasks,
                self.actors,
                self.tasks
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Returns the inodes of the sockets this process has open, such as `socket:[123]`.
fn open_sockets() -> BTreeSet<String> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return BTreeSet::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| std::fs::read_link(entry.path()).ok())
        .map(|target| target.display().to_string())
        .filter(|target| target.starts_with("socket:"))
        .collect()
}

/// A forwarding recipient on its own arbiter whose thread is blocked until released, so
/// its mailbox fills up like that of a slow application actor.
pub struct Stalled {
    arbiter: Arbiter,
    release: std::sync::mpsc::Sender<()>,
}

impl Stalled {
    /// Starts the forwarding actor and blocks its thread, at most for `STEP`.
    pub fn start() -> (
        Self,
        Addr<Forward<mqttlink::Message>>,
        mpsc::UnboundedReceiver<mqttlink::Message>,
    ) {
        let arbiter = Arbiter::new();
        let (sender, receiver) = mpsc::unbounded_channel();
        let addr = Forward::start_in_arbiter(&arbiter.handle(), move |_| Forward(sender));
        let (release, wait) = std::sync::mpsc::channel::<()>();
        arbiter.spawn(async move {
            let _ = wait.recv_timeout(STEP);
        });
        (Self { arbiter, release }, addr, receiver)
    }

    /// Unblocks the recipient's thread.
    pub fn release(&self) {
        let _ = self.release.send(());
    }
}

impl Drop for Stalled {
    fn drop(&mut self) {
        let _ = self.release.send(());
        self.arbiter.stop();
    }
}
