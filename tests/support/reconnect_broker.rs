//! A scripted fake broker for the reconnect tests, and a Mosquitto process that can be
//! restarted with its persistence file.
//!
//! The fake broker listens on 127.0.0.1 port 0 and hands each accepted connection to the
//! test, which reads and writes packets one step at a time. A test can accept CONNECT
//! with or without Session Present, reject it with a reason code, read N packets and
//! then cut the connection, cut it in the middle of a packet, reset it, or stall it by
//! holding the socket without reading or writing. Every wait is bounded.
//!
//! [`SessionBroker`] plays a broker that follows the protocol on its own and keeps the
//! session between connections, with one scripted [`Fault`] per connection.

#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mqttlink::codec::{
    encode, ConnAck, Connect, ConnectReason, Decoder, Delivery, Packet, PacketId, Properties,
    ProtocolVersion, PubAck, PubAckReason, PubComp, PubCompReason, PubRec, PubRel, Publish, QoS,
    SubAck, SubAckReason, TopicName,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use super::actor_broker::STEP;

/// A listening fake broker.
pub struct ScriptedBroker {
    listener: TcpListener,
}

impl ScriptedBroker {
    /// Listens on 127.0.0.1 at a free port.
    pub async fn bind() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        Self { listener }
    }

    /// Returns the port the broker listens on.
    pub fn port(&self) -> u16 {
        self.listener.local_addr().expect("local address").port()
    }

    /// Accepts the next connection from the client.
    pub async fn accept(&self) -> Connection {
        let (stream, _) = tokio::time::timeout(STEP, self.listener.accept())
            .await
            .expect("client connects in time")
            .expect("accept");
        // Without it, a second small write waits for the client's delayed ACK.
        stream.set_nodelay(true).expect("set TCP_NODELAY");
        Connection {
            stream,
            decoder: Decoder::for_server(),
            buf: BytesMut::new(),
        }
    }

    /// Returns `true` when no client connects within `wait`.
    pub async fn no_connection_within(&self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.listener.accept())
            .await
            .is_err()
    }
}

/// One client connection, seen from the broker.
pub struct Connection {
    stream: TcpStream,
    decoder: Decoder,
    buf: BytesMut,
}

impl Connection {
    /// Returns the next packet from the client, or `None` once it closed the connection.
    pub async fn next(&mut self) -> Option<Packet> {
        loop {
            let decoded = self
                .decoder
                .decode(&mut self.buf)
                .expect("client sends valid packets");
            if let Some(packet) = decoded {
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

    /// Returns the next packet, failing the test when the connection closed first.
    pub async fn recv(&mut self) -> Packet {
        self.next().await.expect("client sends a packet")
    }

    /// Reads `count` packets and returns them, so the test can cut the connection after them.
    pub async fn recv_packets(&mut self, count: usize) -> Vec<Packet> {
        let mut packets = Vec::with_capacity(count);
        for _ in 0..count {
            packets.push(self.recv().await);
        }
        packets
    }

    /// Expects CONNECT and returns it.
    pub async fn expect_connect(&mut self) -> Connect {
        match self.recv().await {
            Packet::Connect(connect) => *connect,
            other => panic!("expected CONNECT, got {other:?}"),
        }
    }

    /// Expects CONNECT, accepts it with `session_present`, and returns the CONNECT.
    pub async fn accept_connect(&mut self, session_present: bool) -> Connect {
        self.accept_connect_with(session_present, Properties::default())
            .await
    }

    /// Expects CONNECT, accepts it with `session_present` and CONNACK `properties`, and
    /// returns the CONNECT.
    pub async fn accept_connect_with(
        &mut self,
        session_present: bool,
        properties: Properties,
    ) -> Connect {
        let connect = self.expect_connect().await;
        self.send(&Packet::ConnAck(ConnAck {
            session_present,
            reason: ConnectReason::Success,
            properties: properties.into(),
        }))
        .await;
        connect
    }

    /// Expects CONNECT and rejects it with `reason`, then waits for the client to close.
    pub async fn reject_connect(&mut self, reason: ConnectReason) -> Connect {
        let connect = self.expect_connect().await;
        self.send(&Packet::ConnAck(ConnAck {
            session_present: false,
            reason,
            properties: Properties::default().into(),
        }))
        .await;
        let rest = self.until_closed().await;
        assert!(
            rest.is_empty(),
            "packets after a rejected CONNECT: {rest:?}"
        );
        connect
    }

    /// Sends one packet, encoded for the version of the client's CONNECT.
    pub async fn send(&mut self, packet: &Packet) {
        let out = self.encode(packet);
        tokio::time::timeout(STEP, self.stream.write_all(&out))
            .await
            .expect("write in time")
            .expect("write");
    }

    /// Returns `true` when the client's CONNECT asked for MQTT 5.0.
    pub fn is_v5(&self) -> bool {
        self.decoder.version() == Some(ProtocolVersion::V5)
    }

    /// Sends raw bytes, for packets the encoder does not produce for this version.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        tokio::time::timeout(STEP, self.stream.write_all(bytes))
            .await
            .expect("write in time")
            .expect("write");
    }

    /// Sends one packet and returns whether the client still took it; `false` when the
    /// client closed the connection.
    pub async fn try_send(&mut self, packet: &Packet) -> bool {
        let out = self.encode(packet);
        matches!(
            tokio::time::timeout(STEP, self.stream.write_all(&out)).await,
            Ok(Ok(()))
        )
    }

    /// Cuts the connection without DISCONNECT, as a crashed broker or a dead link would.
    pub fn cut(self) {
        drop(self);
    }

    /// Writes the first `len` bytes of `packet` and cuts the connection, so the client
    /// reads a packet that ends in the middle.
    pub async fn cut_inside(mut self, packet: &Packet, len: usize) {
        let bytes = self.encode(packet);
        let len = len.min(bytes.len() - 1);
        tokio::time::timeout(STEP, self.stream.write_all(&bytes[..len]))
            .await
            .expect("write in time")
            .expect("write");
        drop(self);
    }

    /// Closes the connection with SO_LINGER 0, so the client gets a reset (RST) instead
    /// of an end of stream.
    pub fn reset(self) {
        let _ = self.stream.set_zero_linger();
        drop(self.stream);
    }

    /// Returns the bytes of `packet`, encoded for the version of the client's CONNECT.
    pub fn encode(&self, packet: &Packet) -> BytesMut {
        let version = self.decoder.version().unwrap_or(ProtocolVersion::V5);
        let mut out = BytesMut::new();
        encode(packet, version, u32::MAX, &mut out).expect("test packet encodes");
        out
    }

    /// Reads until the client closes the connection and returns what it sent.
    pub async fn until_closed(&mut self) -> Vec<Packet> {
        let mut packets = Vec::new();
        while let Some(packet) = self.next().await {
            packets.push(packet);
        }
        packets
    }
}

/// A fault that [`SessionBroker`] injects into one connection. Packets are counted from
/// 0 on each connection in each direction: read 0 is CONNECT, write 0 is CONNACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Cut the connection (FIN) instead of reading client packet `n`.
    CutBeforeRead(usize),
    /// Reset the connection (RST) while client packet `n` is in transit: the broker
    /// acts on none of its bytes. The client wrote the whole packet, so from its side
    /// this is a cut in the middle of that packet.
    ResetInsideRead(usize),
    /// Cut the connection (FIN) instead of writing broker packet `n`.
    CutBeforeWrite(usize),
    /// Write the first half of broker packet `n`, then cut the connection.
    CutInsideWrite(usize),
    /// Stall instead of writing broker packet `n`: keep the socket open, act on
    /// nothing the client sends and send nothing, until the client closes it.
    StallBeforeWrite(usize),
}

/// How [`SessionBroker`] treats the session state at the start of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Keep the session as MQTT requires: resume it when the client requests it.
    KeepSession,
    /// Act as a broker restarted without its session state: forget the session and
    /// reply with Session Present 0.
    LoseSession,
}

/// The script of one connection: at most one fault, and the session handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Script {
    /// Fault injected into this connection.
    pub fault: Option<Fault>,
    /// Session handling at CONNECT.
    pub restart: Restart,
}

impl Script {
    /// A connection that follows the protocol to its end.
    pub const CLEAN: Self = Self {
        fault: None,
        restart: Restart::KeepSession,
    };
}

/// How one connection of [`SessionBroker`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The scripted fault cut the connection.
    Cut,
    /// The scripted fault stalled the connection until the client closed it.
    Stalled,
    /// The client sent DISCONNECT and closed the connection.
    Disconnected,
    /// The client closed the connection without DISCONNECT.
    ClosedByClient,
}

/// Packets exchanged on one connection, and how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionReport {
    /// Client packets the broker acted on, CONNECT included.
    pub reads: usize,
    /// Broker packets written completely, CONNACK included.
    pub writes: usize,
    /// How the connection ended.
    pub ended: Ended,
    /// PINGREQ packets the client sent while the connection stalled.
    pub unanswered_pings: usize,
}

/// Stage of a QoS 1 or 2 message the broker sent to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // The variants are the packet names.
enum Awaiting {
    PubAck,
    PubRec,
    PubComp,
}

/// A message the broker sent to the client and that is not acknowledged yet.
#[derive(Debug, Clone)]
struct OutboundMessage {
    packet_id: PacketId,
    awaiting: Awaiting,
    publish: Publish,
}

/// What a spec-following broker keeps for the test's client, and what it has seen.
#[derive(Debug, Default)]
pub struct BrokerSession {
    /// Messages the client published, in the order the broker accepted them and passed
    /// them on, so a QoS 1 message sent again appears again.
    pub received: Vec<(String, Bytes)>,
    /// Payloads whose final acknowledgement (PUBACK or PUBCOMP) the broker wrote
    /// completely.
    pub acknowledged: HashSet<Bytes>,
    /// Payload of the last client PUBLISH under each packet identifier. It is what the
    /// test saw, not session state, so a broker that lost its session still finds
    /// the message a PUBCOMP completes.
    payloads_by_id: HashMap<PacketId, Bytes>,
    /// Connections accepted so far.
    pub connections: usize,
    /// Inbound QoS 2 messages for which PUBREC was sent and PUBREL is awaited.
    awaiting_pubrel: BTreeMap<PacketId, Bytes>,
    /// Messages for the client not sent yet, in order.
    queued: VecDeque<(TopicName, Bytes, QoS)>,
    /// Messages sent to the client and not yet acknowledged, in the order first sent.
    unacknowledged: Vec<OutboundMessage>,
    next_packet_id: u16,
    /// Whether a CONNECT created the session and no clean start or restart without
    /// session has ended it since.
    exists: bool,
}

impl BrokerSession {
    /// Returns `true` when every message queued for the client was sent and completely
    /// acknowledged.
    pub fn outbound_done(&self) -> bool {
        self.queued.is_empty() && self.unacknowledged.is_empty()
    }

    fn forget_session(&mut self) {
        self.awaiting_pubrel.clear();
        self.unacknowledged.clear();
        self.exists = false;
    }

    fn allocate_packet_id(&mut self) -> PacketId {
        self.next_packet_id = self.next_packet_id.wrapping_add(1).max(1);
        PacketId::try_from(self.next_packet_id).expect("identifier is not 0")
    }
}

/// A fake broker that follows MQTT for QoS 0, 1 and 2 in both directions, keeps the
/// session between connections, and injects one scripted fault per connection.
///
/// On a resumed session it sends its unacknowledged PUBLISH packets again with DUP set
/// and its PUBREL packets again, in the order first sent, before any new message. It
/// passes a client's QoS 2 message on when the PUBLISH arrives and acknowledges a
/// repeated PUBLISH for an identifier awaiting PUBREL without passing it on again.
pub struct SessionBroker {
    broker: ScriptedBroker,
    /// State shared with the test, which runs on the same thread.
    pub session: Rc<RefCell<BrokerSession>>,
    /// Notified after every change of `session`.
    pub changed: Rc<Notify>,
    /// Notified by [`SessionBroker::stop`].
    stop: Notify,
}

/// Result of one step of a connection: go on, or the connection ended.
type Step = Result<(), Ended>;

impl SessionBroker {
    /// Listens on 127.0.0.1 at a free port.
    pub async fn bind() -> Self {
        Self {
            broker: ScriptedBroker::bind().await,
            session: Rc::default(),
            changed: Rc::new(Notify::new()),
            stop: Notify::new(),
        }
    }

    /// Makes [`SessionBroker::serve`] return once it waits for a connection, for a
    /// client that stopped after a fault cut its last connection.
    pub fn stop(&self) {
        self.stop.notify_one();
    }

    /// Returns the port the broker listens on.
    pub fn port(&self) -> u16 {
        self.broker.port()
    }

    /// Queues a message for the client. It is sent after CONNACK of the next
    /// connection, or on the current one after the next packet the client sends.
    pub fn queue(&self, topic: TopicName, payload: Bytes, qos: QoS) {
        self.session
            .borrow_mut()
            .queued
            .push_back((topic, payload, qos));
    }

    /// Serves connections, the n-th with `scripts[n]` and the later ones with
    /// [`Script::CLEAN`], until the client disconnects or [`SessionBroker::stop`] is
    /// called; returns one report per connection. Bounded: fails after 64 connections
    /// or when no client connects within `STEP`.
    pub async fn serve(&self, scripts: &[Script]) -> Vec<ConnectionReport> {
        let mut reports = Vec::new();
        for index in 0..64 {
            let script = scripts.get(index).copied().unwrap_or(Script::CLEAN);
            let connection = tokio::select! {
                connection = self.broker.accept() => connection,
                () = self.stop.notified() => return reports,
            };
            let report = self.serve_connection(connection, script).await;
            reports.push(report);
            if report.ended == Ended::Disconnected {
                return reports;
            }
        }
        panic!("client did not finish within 64 connections: {reports:?}");
    }

    async fn serve_connection(&self, connection: Connection, script: Script) -> ConnectionReport {
        self.session.borrow_mut().connections += 1;
        let mut io = FaultyConnection {
            connection: Some(connection),
            fault: script.fault,
            reads: 0,
            writes: 0,
        };
        let ended = match self.run(&mut io, script.restart).await {
            Ok(()) => unreachable!("a connection runs until it ends"),
            Err(ended) => ended,
        };
        let mut unanswered_pings = 0;
        if ended == Ended::Stalled {
            // The broker drains what the client sends so that it sees the close, but it
            // acts on none of it: PINGREQ gets no PINGRESP.
            let drained = io.until_closed().await;
            unanswered_pings = drained
                .iter()
                .filter(|packet| matches!(packet, Packet::PingReq))
                .count();
        }
        self.changed.notify_one();
        ConnectionReport {
            reads: io.reads,
            writes: io.writes,
            ended,
            unanswered_pings,
        }
    }

    async fn run(&self, io: &mut FaultyConnection, restart: Restart) -> Step {
        let connect = match io.read().await? {
            Packet::Connect(connect) => connect,
            other => panic!("expected CONNECT, got {other:?}"),
        };
        let session_present = {
            let mut session = self.session.borrow_mut();
            if connect.clean_start || restart == Restart::LoseSession {
                session.forget_session();
            }
            // Session Present is 1 only for a session an earlier CONNECT created.
            let present = session.exists;
            session.exists = true;
            present
        };
        io.write(&Packet::ConnAck(ConnAck {
            session_present,
            reason: ConnectReason::Success,
            properties: Properties::default().into(),
        }))
        .await?;

        let resent: Vec<Packet> = self
            .session
            .borrow()
            .unacknowledged
            .iter()
            .map(resend_packet)
            .collect();
        for packet in resent {
            io.write(&packet).await?;
        }
        loop {
            self.send_queued(io).await?;
            let packet = io.read().await?;
            self.handle(io, packet).await?;
            self.changed.notify_one();
        }
    }

    /// Sends every queued message; a QoS 1 or 2 message counts as unacknowledged from
    /// the moment the broker starts writing it.
    async fn send_queued(&self, io: &mut FaultyConnection) -> Step {
        loop {
            let packet = {
                let mut session = self.session.borrow_mut();
                let Some((topic, payload, qos)) = session.queued.pop_front() else {
                    return Ok(());
                };
                let (delivery, awaiting) = match qos {
                    QoS::AtMostOnce => (Delivery::AtMostOnce, None),
                    QoS::AtLeastOnce => {
                        let id = session.allocate_packet_id();
                        (Delivery::AtLeastOnce(id), Some((id, Awaiting::PubAck)))
                    }
                    QoS::ExactlyOnce => {
                        let id = session.allocate_packet_id();
                        (Delivery::ExactlyOnce(id), Some((id, Awaiting::PubRec)))
                    }
                };
                let publish = Publish {
                    dup: false,
                    delivery,
                    retain: false,
                    topic: Some(topic),
                    properties: Properties::default().into(),
                    payload,
                };
                if let Some((packet_id, awaiting)) = awaiting {
                    session.unacknowledged.push(OutboundMessage {
                        packet_id,
                        awaiting,
                        publish: publish.clone(),
                    });
                }
                Packet::Publish(publish)
            };
            io.write(&packet).await?;
        }
    }

    async fn handle(&self, io: &mut FaultyConnection, packet: Packet) -> Step {
        match packet {
            Packet::Publish(publish) => self.on_publish(io, publish).await,
            Packet::PubRel(rel) => self.on_pubrel(io, rel.packet_id).await,
            Packet::PubAck(ack) => {
                self.complete(ack.packet_id, Awaiting::PubAck);
                Ok(())
            }
            Packet::PubRec(rec) => {
                let known = {
                    let mut session = self.session.borrow_mut();
                    let flow = session
                        .unacknowledged
                        .iter_mut()
                        .find(|flow| flow.packet_id == rec.packet_id);
                    match flow {
                        Some(flow) if flow.awaiting != Awaiting::PubAck => {
                            flow.awaiting = Awaiting::PubComp;
                            true
                        }
                        _ => false,
                    }
                };
                assert!(known, "PUBREC for unknown identifier {}", rec.packet_id);
                io.write(&pubrel(rec.packet_id)).await
            }
            Packet::PubComp(comp) => {
                self.complete(comp.packet_id, Awaiting::PubComp);
                Ok(())
            }
            Packet::Subscribe(subscribe) => {
                let reasons = subscribe
                    .filters
                    .iter()
                    .map(|(_, options)| granted(options.qos))
                    .collect();
                io.write(&Packet::SubAck(SubAck {
                    packet_id: subscribe.packet_id,
                    reasons,
                    properties: Properties::default().into(),
                }))
                .await
            }
            Packet::PingReq => io.write(&Packet::PingResp).await,
            Packet::Disconnect(_) => {
                let rest = io.until_closed().await;
                assert!(rest.is_empty(), "packets after DISCONNECT: {rest:?}");
                Err(Ended::Disconnected)
            }
            other => panic!("unexpected packet from the client: {other:?}"),
        }
    }

    async fn on_publish(&self, io: &mut FaultyConnection, publish: Publish) -> Step {
        let topic = publish
            .topic
            .as_ref()
            .expect("client sends topic names")
            .as_str()
            .to_owned();
        let payload = publish.payload.clone();
        if let Some(id) = publish.delivery.packet_id() {
            self.session
                .borrow_mut()
                .payloads_by_id
                .insert(id, payload.clone());
        }
        match publish.delivery {
            Delivery::AtMostOnce => {
                self.session.borrow_mut().received.push((topic, payload));
                Ok(())
            }
            Delivery::AtLeastOnce(id) => {
                self.session
                    .borrow_mut()
                    .received
                    .push((topic, payload.clone()));
                io.write(&Packet::PubAck(PubAck {
                    packet_id: id,
                    reason: PubAckReason::Success,
                    properties: Properties::default().into(),
                }))
                .await?;
                self.session.borrow_mut().acknowledged.insert(payload);
                Ok(())
            }
            Delivery::ExactlyOnce(id) => {
                {
                    let mut session = self.session.borrow_mut();
                    if let std::collections::btree_map::Entry::Vacant(entry) =
                        session.awaiting_pubrel.entry(id)
                    {
                        entry.insert(payload.clone());
                        session.received.push((topic, payload));
                    }
                }
                io.write(&Packet::PubRec(PubRec {
                    packet_id: id,
                    reason: PubAckReason::Success,
                    properties: Properties::default().into(),
                }))
                .await
            }
        }
    }

    /// Sends PUBCOMP for a PUBREL and forgets the identifier once PUBCOMP is written,
    /// so a PUBREL repeated after a cut still finds the message it completes.
    async fn on_pubrel(&self, io: &mut FaultyConnection, id: PacketId) -> Step {
        let known = self.session.borrow().awaiting_pubrel.contains_key(&id);
        let reason = if known || io.version() != ProtocolVersion::V5 {
            PubCompReason::Success
        } else {
            PubCompReason::PacketIdentifierNotFound
        };
        io.write(&Packet::PubComp(PubComp {
            packet_id: id,
            reason,
            properties: Properties::default().into(),
        }))
        .await?;
        let mut session = self.session.borrow_mut();
        session.awaiting_pubrel.remove(&id);
        if let Some(payload) = session.payloads_by_id.get(&id).cloned() {
            session.acknowledged.insert(payload);
        }
        Ok(())
    }

    /// Removes the outbound flow `id` when it awaits `stage`; a repeated acknowledgement
    /// of a finished flow is ignored, as MQTT allows after a resumed session.
    fn complete(&self, id: PacketId, stage: Awaiting) {
        let mut session = self.session.borrow_mut();
        let position = session
            .unacknowledged
            .iter()
            .position(|flow| flow.packet_id == id && flow.awaiting == stage);
        if let Some(position) = position {
            session.unacknowledged.remove(position);
        }
    }
}

/// The packet that repeats an unacknowledged flow on a resumed session: the PUBLISH with
/// DUP set, or PUBREL once PUBREC arrived.
fn resend_packet(flow: &OutboundMessage) -> Packet {
    match flow.awaiting {
        Awaiting::PubAck | Awaiting::PubRec => Packet::Publish(Publish {
            dup: true,
            ..flow.publish.clone()
        }),
        Awaiting::PubComp => pubrel(flow.packet_id),
    }
}

fn pubrel(packet_id: PacketId) -> Packet {
    Packet::PubRel(PubRel {
        packet_id,
        reason: PubCompReason::Success,
        properties: Properties::default().into(),
    })
}

fn granted(qos: QoS) -> SubAckReason {
    match qos {
        QoS::AtMostOnce => SubAckReason::GrantedQoS0,
        QoS::AtLeastOnce => SubAckReason::GrantedQoS1,
        QoS::ExactlyOnce => SubAckReason::GrantedQoS2,
    }
}

/// A connection that counts the packets in each direction and injects its fault.
struct FaultyConnection {
    /// `None` once the fault cut the connection.
    connection: Option<Connection>,
    fault: Option<Fault>,
    reads: usize,
    writes: usize,
}

impl FaultyConnection {
    fn version(&self) -> ProtocolVersion {
        self.connection
            .as_ref()
            .and_then(|connection| connection.decoder.version())
            .unwrap_or(ProtocolVersion::V5)
    }

    /// Returns the next client packet, or ends the connection: by the fault, or because
    /// the client closed it.
    async fn read(&mut self) -> Result<Packet, Ended> {
        let index = self.reads;
        let mut connection = self.connection.take().ok_or(Ended::Cut)?;
        match self.fault {
            Some(Fault::CutBeforeRead(n)) if n == index => {
                connection.cut();
                return Err(Ended::Cut);
            }
            Some(Fault::ResetInsideRead(n)) if n == index => {
                // Wait until the packet arrived, so the reset hits it in transit.
                connection.next().await.ok_or(Ended::ClosedByClient)?;
                connection.reset();
                return Err(Ended::Cut);
            }
            _ => {}
        }
        let packet = connection.next().await;
        self.connection = Some(connection);
        let packet = packet.ok_or(Ended::ClosedByClient)?;
        self.reads += 1;
        Ok(packet)
    }

    /// Writes one packet, or cuts the connection before or inside it.
    async fn write(&mut self, packet: &Packet) -> Step {
        let index = self.writes;
        let connection = self.connection.take().ok_or(Ended::Cut)?;
        match self.fault {
            Some(Fault::CutBeforeWrite(n)) if n == index => {
                connection.cut();
                return Err(Ended::Cut);
            }
            Some(Fault::CutInsideWrite(n)) if n == index => {
                let half = connection.encode(packet).len() / 2;
                connection.cut_inside(packet, half.max(1)).await;
                return Err(Ended::Cut);
            }
            Some(Fault::StallBeforeWrite(n)) if n == index => {
                self.connection = Some(connection);
                return Err(Ended::Stalled);
            }
            _ => {}
        }
        let mut connection = connection;
        let written = connection.try_send(packet).await;
        self.connection = Some(connection);
        if !written {
            return Err(Ended::ClosedByClient);
        }
        self.writes += 1;
        Ok(())
    }

    async fn until_closed(&mut self) -> Vec<Packet> {
        match self.connection.as_mut() {
            Some(connection) => connection.until_closed().await,
            None => Vec::new(),
        }
    }
}

/// Environment variable that turns a missing Mosquitto binary into a test failure, as in
/// the shared Mosquitto harness.
pub const REQUIRE_MOSQUITTO_VAR: &str = "MQTTLINK_REQUIRE_MOSQUITTO";

/// Environment variable that overrides the path of the Mosquitto binary.
pub const MOSQUITTO_BINARY_VAR: &str = "MQTTLINK_MOSQUITTO";

/// A Mosquitto process with persistence that can be stopped and started again on the
/// same port and with the same directory, which the shared harness cannot do. It is
/// stopped by its PID when dropped, and its directory is removed.
pub struct RestartableMosquitto {
    binary: std::path::PathBuf,
    dir: std::path::PathBuf,
    port: u16,
    child: Option<std::process::Child>,
}

impl RestartableMosquitto {
    /// Starts a broker with persistence in a fresh directory, or returns `None` after
    /// printing why the test is skipped when no binary exists.
    pub async fn start(name: &str) -> Option<Self> {
        Self::start_with(name, true).await
    }

    /// Starts a broker in a fresh directory, with persistence or without, so that a
    /// restart keeps the sessions or loses them. Returns `None` after printing why the
    /// test is skipped when no binary exists.
    pub async fn start_with(name: &str, persistence: bool) -> Option<Self> {
        let binary = std::env::var_os(MOSQUITTO_BINARY_VAR)
            .map_or_else(|| "/usr/sbin/mosquitto".into(), std::path::PathBuf::from);
        if !binary.is_file() {
            assert!(
                std::env::var_os(REQUIRE_MOSQUITTO_VAR).is_none(),
                "mosquitto not found at {}",
                binary.display()
            );
            println!("skipped: mosquitto not found at {}", binary.display());
            return None;
        }
        let dir = std::env::temp_dir().join(format!("mqttlink-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the broker directory");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("find a free port")
            .port();
        let mut config = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence {persistence}\n\
             persistence_location {}/\nlog_dest file {}/mosquitto.log\n\
             log_type all\nmax_queued_messages 10000\n",
            dir.display(),
            dir.display()
        );
        // Started as root, mosquitto switches to the user `mosquitto`, which cannot
        // write the log and the persistence file into this root-owned directory.
        let owner = std::os::unix::fs::MetadataExt::uid(
            &std::fs::metadata(&dir).expect("read the broker directory"),
        );
        if owner == 0 {
            config.push_str("user root\n");
        }
        std::fs::write(dir.join("mosquitto.conf"), config).expect("write the broker config");

        let mut broker = Self {
            binary,
            dir,
            port,
            child: None,
        };
        broker.launch().await;
        Some(broker)
    }

    /// Returns the port the broker listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the broker with SIGTERM, so it writes its persistence file, and starts it
    /// again on the same port from that file.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.launch().await;
    }

    /// Returns the last lines of the broker's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    async fn launch(&mut self) {
        let child = std::process::Command::new(&self.binary)
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn mosquitto");
        self.child = Some(child);

        // Bounded polling: a TCP connect succeeds once the listener is bound.
        for _ in 0..500 {
            if TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "mosquitto did not listen on port {} in time:\n{}",
            self.port,
            self.log_tail()
        );
    }

    async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let terminated = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .is_ok_and(|status| status.success());
        if terminated {
            for _ in 0..500 {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for RestartableMosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("mosquitto log tail:\n{}", self.log_tail());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl RestartableMosquitto {
    /// Stops the broker with SIGTERM, so it writes its persistence file, and leaves it
    /// stopped until [`RestartableMosquitto::start_again`]; its port and directory stay.
    pub async fn stop_for_outage(&mut self) {
        self.stop().await;
    }

    /// Starts the broker again on the same port, from its persistence file.
    pub async fn start_again(&mut self) {
        self.launch().await;
    }

    /// Appends `lines` to the broker's config file. They take effect at the next
    /// [`RestartableMosquitto::restart`], and a later line overrides an earlier one
    /// of the same option, such as `max_queued_messages`.
    pub fn append_config(&self, lines: &str) {
        let path = self.dir.join("mosquitto.conf");
        let mut config = std::fs::read_to_string(&path).expect("read the broker config");
        config.push_str(lines);
        std::fs::write(&path, config).expect("write the broker config");
    }

    /// Returns the broker's whole log, across its restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }
}

/// Waits until `client` reports `expected` queued requests, reading its counters a
/// bounded number of times, and returns the last count read.
pub async fn wait_for_queued(client: &mqttlink::Client, expected: usize) -> usize {
    let mut queued = 0;
    for _ in 0..100 {
        queued = client.stats().await.expect("client runs").queued_requests;
        if queued == expected {
            break;
        }
        tokio::task::yield_now().await;
    }
    queued
}

/// Options of a client whose session survives a broker restart: MQTT 3.1.1 with clean
/// session 0. Mosquitto 2.0.11 writes to its persistence file only the sessions of
/// clients that connected with clean start 0, so a v5 client that starts with clean
/// start 1 and a Session Expiry Interval loses its session at the first restart.
pub fn persistent(port: u16, client_id: &str) -> mqttlink::ClientOptions {
    mqttlink::ClientOptions::new("127.0.0.1", port)
        .client_id(client_id)
        .protocol(ProtocolVersion::V3_1_1)
        .clean_start(false)
        .reconnect(true)
        .reconnect_backoff(Duration::from_millis(5), Duration::from_millis(100))
}
