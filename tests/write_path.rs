//! The write path of a connection: the session actor encodes and writes its packets
//! itself, and the socket actor only writes what a full stream did not take. These
//! tests back up the stream on purpose. They check that every packet leaves once,
//! whole and in order, and that each caller gets one result, only after its packet
//! left or was acknowledged. Nothing may be left behind when the connection ends.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "support/hostile.rs"]
mod hostile;

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::RawFd;

use actix::{Actor, Context, Handler};
use bytes::{Bytes, BytesMut};
use hostile::{
    failure, forward, id, inbound, next, puback, pubcomp, pubrec, pubrel, start, topic, within,
    Hostile, Peer, Resources, Started, STEP,
};
use mqttlink::codec::{
    ConnAck, ConnectReason, Decoder, Delivery, DisconnectReason, Packet, PacketId, Properties,
    ProtocolVersion, QoS,
};
use mqttlink::{
    Client, ClientError, ClientOptions, ClosedBy, Disconnect, Event, Publish, PublishOutcome, Stats,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc::{self, UnboundedReceiver};

/// `live_actor_count`, the task count and the open sockets are process-wide, so the
/// tests of this file run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Payload size of the large publishes that fill the stream, in bytes.
const LARGE: usize = 64 * 1024;

/// Starts an MQTT 5 client, accepts its connection and completes the handshake.
async fn connected(
    configure: impl FnOnce(ClientOptions) -> ClientOptions,
) -> (Hostile, Started, Peer) {
    let broker = Hostile::bind().await;
    let options = ClientOptions::from_url(&broker.url())
        .unwrap()
        .client_id("write-path")
        .connect_timeout(STEP);
    let mut started = start(configure(options));
    let mut peer = broker.accept().await;
    peer.handshake_with(Properties::default()).await;
    assert!(matches!(
        next(&mut started.events).await,
        Event::Connected { .. }
    ));
    (broker, started, peer)
}

/// Fails the test unless the client wrote fewer bytes than the `publish_bytes` of its
/// publishes, so the stream filled before it took them all and the rest was left to the
/// socket.
fn assert_stream_filled(stats: &Stats, publish_bytes: usize) {
    let publish_bytes = u64::try_from(publish_bytes).unwrap();
    assert!(
        stats.bytes_out < publish_bytes,
        "the stream took every publish at once, so nothing was left to the socket: {stats:?}"
    );
}

/// Fetches the client's counters and checks them with [`assert_stream_filled`].
async fn assert_client_stream_filled(client: &Client, publish_bytes: usize) {
    let stats = within(client.stats()).await.unwrap();
    assert_stream_filled(&stats, publish_bytes);
}

/// Returns a payload of `size` bytes that starts with `index`, so the broker can check
/// the order and the length of what it receives.
fn numbered_payload(index: usize, size: usize) -> Bytes {
    let mut payload = vec![b'p'; size];
    payload[..4].copy_from_slice(&u32::try_from(index).unwrap().to_be_bytes());
    Bytes::from(payload)
}

/// Returns the index a payload of [`numbered_payload`] starts with.
fn payload_index(payload: &[u8]) -> usize {
    usize::try_from(u32::from_be_bytes(payload[..4].try_into().unwrap())).unwrap()
}

/// Whether the broker acknowledges the QoS 1 publishes it reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Acknowledge {
    Yes,
    No,
}

/// Reads the publishes numbered 0 to `count` in order, checking that each is
/// [`LARGE`] bytes, and sends PUBACK for each when `acknowledge` is `Yes`.
async fn expect_numbered_publishes(peer: &mut Peer, count: usize, acknowledge: Acknowledge) {
    for index in 0..count {
        match peer.recv().await {
            Packet::Publish(publish) => {
                assert_eq!(payload_index(&publish.payload), index, "publish order");
                assert_eq!(publish.payload.len(), LARGE, "publish {index} length");
                if acknowledge == Acknowledge::Yes {
                    peer.send(&puback(publish.delivery.packet_id().unwrap()))
                        .await;
                }
            }
            other => panic!("expected PUBLISH {index}, got {other:?}"),
        }
    }
}

/// Reads a DISCONNECT with reason Normal disconnection, then expects the client to
/// close the stream without sending anything more.
async fn expect_normal_disconnect(peer: &mut Peer) {
    match peer.recv().await {
        Packet::Disconnect(disconnect) => {
            assert_eq!(disconnect.reason, DisconnectReason::NormalDisconnection);
        }
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    assert!(peer.until_closed().await.is_empty());
}

/// The outcome of one publish: its index and its result.
type TaggedOutcome = (usize, Result<PublishOutcome, ClientError>);

/// Publishes `publish` and forwards its outcome, tagged with `index`, to `outcomes`
/// from a local task, so a test learns when each caller gets its result.
fn publish_tagged(
    client: &Client,
    index: usize,
    publish: Publish,
    outcomes: &mpsc::UnboundedSender<TaggedOutcome>,
) {
    let reply = client.try_publish(publish).unwrap();
    let outcomes = outcomes.clone();
    actix_rt::spawn(async move {
        let _ = outcomes.send((index, reply.await));
    });
}

/// Receives outcomes into `completed` until it contains `count`, and fails the test
/// on a second outcome for the same caller.
async fn collect_outcomes(
    outcomes: &mut UnboundedReceiver<TaggedOutcome>,
    completed: &mut BTreeMap<usize, Result<PublishOutcome, ClientError>>,
    count: usize,
) {
    while completed.len() < count {
        let (index, result) = next(outcomes).await;
        assert!(
            completed.insert(index, result).is_none(),
            "publish {index} completed twice"
        );
    }
}

/// Returns the QoS of the `index`th publish in the mixed tests: QoS 1, QoS 2, then two
/// QoS 0.
fn qos_of(index: usize) -> QoS {
    match index % 4 {
        0 => QoS::AtLeastOnce,
        1 => QoS::ExactlyOnce,
        _ => QoS::AtMostOnce,
    }
}

/// Fails the test unless every publish in `completed` succeeded.
fn assert_all_ok(completed: BTreeMap<usize, Result<PublishOutcome, ClientError>>) {
    for (index, result) in completed {
        assert!(result.is_ok(), "publish {index}: {result:?}");
    }
}

/// Disconnects, expects DISCONNECT as the last packet before the client closes, and
/// checks that no actor, task or socket of the test is left.
async fn disconnect_cleanly(
    started: Started,
    mut peer: Peer,
    broker: Hostile,
    baseline: Resources,
) {
    within(started.client.disconnect(Disconnect::new()))
        .await
        .unwrap();
    assert!(matches!(peer.recv().await, Packet::Disconnect(_)));
    assert!(peer.until_closed().await.is_empty());
    drop(started);
    drop(peer);
    drop(broker);
    baseline.assert_back().await;
}

/// Publishes `count` large QoS 0 messages and then requests a disconnect without
/// waiting. Returns the disconnect task and the channel of the publishes' outcomes.
fn disconnect_behind_qos0_backlog(
    client: &Client,
    count: usize,
) -> (
    actix_rt::task::JoinHandle<Result<(), ClientError>>,
    UnboundedReceiver<TaggedOutcome>,
) {
    let (outcome_sender, outcomes) = mpsc::unbounded_channel();
    for index in 0..count {
        let publish = Publish::new(topic("out"), numbered_payload(index, LARGE));
        publish_tagged(client, index, publish, &outcome_sender);
    }
    let client = client.clone();
    let disconnect = actix_rt::spawn(async move { client.disconnect(Disconnect::new()).await });
    (disconnect, outcomes)
}

/// Encodes `packets` back to back, so the broker sends them in one write.
fn burst(peer: &Peer, packets: impl IntoIterator<Item = Packet>) -> Vec<u8> {
    let mut bytes = Vec::new();
    for packet in packets {
        bytes.extend_from_slice(&peer.encode(&packet));
    }
    bytes
}

/// Checks a broker that stops reading while the client publishes large messages of
/// every QoS and receives QoS 1 and 2 messages: the PUBACKs and PUBRECs queue behind the
/// publishes. Once the broker reads again, every packet arrives once, whole and in
/// order, and no QoS 1 or 2 caller gets its result before the broker acknowledged its
/// message. PUBRELs and PUBRECs in bulk then get one PUBCOMP and one PUBREL each.
#[actix_rt::test]
async fn mixed_acks_behind_full_stream() {
    const PUBLISHES: usize = 160;
    const QOS1_MESSAGES: u16 = 40;
    const QOS2_MESSAGES: u16 = 40;
    let _serial = SERIAL.lock().await;
    let baseline = Resources::now();
    let (broker, started, mut peer) = connected(|o| o).await;
    let (recipient, mut messages) = forward::<mqttlink::Message>();
    started.client.set_default_recipient(recipient.recipient());

    let (outcome_sender, mut outcomes) = mpsc::unbounded_channel();
    for index in 0..PUBLISHES {
        let publish = Publish::new(topic("out"), numbered_payload(index, LARGE)).qos(qos_of(index));
        publish_tagged(&started.client, index, publish, &outcome_sender);
    }
    let qos1_ids = 1..=QOS1_MESSAGES;
    let qos2_ids = QOS1_MESSAGES + 1..=QOS1_MESSAGES + QOS2_MESSAGES;
    let mut messages_in = Vec::new();
    for (qos1, qos2) in qos1_ids.clone().zip(qos2_ids.clone()) {
        messages_in.push(inbound(Delivery::AtLeastOnce(id(qos1)), "in", b"one"));
        messages_in.push(inbound(Delivery::ExactlyOnce(id(qos2)), "in", b"two"));
    }
    let bytes = burst(&peer, messages_in);
    peer.send_raw(&bytes).await;
    for _ in 0..QOS1_MESSAGES + QOS2_MESSAGES {
        next(&mut messages).await;
    }
    assert_client_stream_filled(&started.client, PUBLISHES * LARGE).await;

    // The broker reads again: every publish in order, each acknowledgement once.
    let mut next_index = 0;
    let mut outbound_ids = BTreeMap::new();
    let mut acknowledged = BTreeSet::new();
    let mut received = BTreeSet::new();
    let expected_acks = usize::from(QOS1_MESSAGES + QOS2_MESSAGES);
    while next_index < PUBLISHES || acknowledged.len() + received.len() < expected_acks {
        match peer.recv().await {
            Packet::Publish(publish) => {
                assert_eq!(payload_index(&publish.payload), next_index, "publish order");
                assert_eq!(publish.payload.len(), LARGE, "publish {next_index} length");
                assert_eq!(publish.delivery.qos(), qos_of(next_index));
                if let Some(packet_id) = publish.delivery.packet_id() {
                    outbound_ids.insert(next_index, packet_id);
                }
                next_index += 1;
            }
            Packet::PubAck(ack) => {
                assert!(acknowledged.insert(ack.packet_id.get()), "{ack:?} twice");
            }
            Packet::PubRec(rec) => {
                assert!(received.insert(rec.packet_id.get()), "{rec:?} twice");
            }
            other => panic!("expected PUBLISH, PUBACK or PUBREC, got {other:?}"),
        }
    }
    assert_eq!(acknowledged, qos1_ids.clone().collect::<BTreeSet<_>>());
    assert_eq!(received, qos2_ids.clone().collect::<BTreeSet<_>>());

    // Every QoS 0 publish is written, so its caller may have its result by now. No QoS 1
    // or 2 caller may be, because the broker acknowledged nothing yet.
    within(started.client.stats()).await.unwrap();
    let mut completed = BTreeMap::new();
    while let Ok((index, result)) = outcomes.try_recv() {
        assert_eq!(
            qos_of(index),
            QoS::AtMostOnce,
            "publish {index} completed early"
        );
        assert!(
            completed.insert(index, result).is_none(),
            "publish {index} completed twice"
        );
    }

    // One write acknowledges every publish and releases every QoS 2 message.
    let mut replies = Vec::new();
    for (index, packet_id) in &outbound_ids {
        match qos_of(*index) {
            QoS::AtLeastOnce => replies.push(puback(*packet_id)),
            _ => replies.push(pubrec(*packet_id)),
        }
    }
    replies.extend(qos2_ids.clone().map(|value| pubrel(id(value))));
    let bytes = burst(&peer, replies);
    peer.send_raw(&bytes).await;

    let qos2_out: Vec<PacketId> = outbound_ids
        .iter()
        .filter(|(index, _)| qos_of(**index) == QoS::ExactlyOnce)
        .map(|(_, packet_id)| *packet_id)
        .collect();
    let mut released = Vec::new();
    let mut pubcomps = Vec::new();
    while released.len() < qos2_out.len() || pubcomps.len() < usize::from(QOS2_MESSAGES) {
        match peer.recv().await {
            Packet::PubRel(rel) => released.push(rel.packet_id),
            Packet::PubComp(comp) => pubcomps.push(comp.packet_id.get()),
            other => panic!("expected PUBREL or PUBCOMP, got {other:?}"),
        }
    }
    assert_eq!(released, qos2_out, "one PUBREL per PUBREC, in order");
    assert_eq!(
        pubcomps,
        qos2_ids.collect::<Vec<_>>(),
        "one PUBCOMP per PUBREL, in order"
    );
    let bytes = burst(&peer, qos2_out.iter().map(|packet_id| pubcomp(*packet_id)));
    peer.send_raw(&bytes).await;

    collect_outcomes(&mut outcomes, &mut completed, PUBLISHES).await;
    assert_all_ok(completed);

    disconnect_cleanly(started, peer, broker, baseline).await;
}

/// Checks a read with twenty QoS 1 messages, five PUBACKs and then a malformed packet:
/// the session writes the PUBACKs of the first 16 messages in the middle of the read, then
/// stops with the decode error. The callers of the five publishes get their PUBACK,
/// not the failure, and the broker gets nothing after the DISCONNECT.
#[actix_rt::test]
async fn malformed_after_sixteen_qos1_stops_cleanly() {
    const OUTBOUND: usize = 5;
    const MESSAGES: u16 = 20;
    /// The messages whose PUBACK leaves before the malformed packet is decoded.
    const ACKED_MID_READ: u16 = 16;
    let _serial = SERIAL.lock().await;
    let baseline = Resources::now();
    let (broker, mut started, mut peer) = connected(|o| o).await;
    let (recipient, mut messages) = forward::<mqttlink::Message>();
    started.client.set_default_recipient(recipient.recipient());

    let (outcome_sender, mut outcomes) = mpsc::unbounded_channel();
    let mut outbound_ids = Vec::new();
    for index in 0..OUTBOUND {
        let publish = Publish::new(topic("out"), numbered_payload(index, 8)).qos(QoS::AtLeastOnce);
        publish_tagged(&started.client, index, publish, &outcome_sender);
        match peer.recv().await {
            Packet::Publish(publish) => outbound_ids.push(publish.delivery.packet_id().unwrap()),
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    // The PUBACKs come after the mid-read write, so they complete in the step that
    // ends with the decode error.
    let mut packets: Vec<Packet> = (1..=MESSAGES)
        .map(|value| inbound(Delivery::AtLeastOnce(id(value)), "in", b"m"))
        .collect();
    packets.extend(outbound_ids.iter().map(|packet_id| puback(*packet_id)));
    let mut bytes = burst(&peer, packets);
    // PUBLISH with QoS 3, then a valid message that must never be handled.
    bytes.extend_from_slice(&[0x36, 0x06, 0x00, 0x01, b'a', 0x00, 0x01, 0x00]);
    bytes.extend_from_slice(&peer.encode(&inbound(Delivery::AtLeastOnce(id(999)), "in", b"late")));
    peer.send_raw(&bytes).await;

    let sent = peer.until_closed().await;
    let (last, acks) = sent.split_last().expect("client sends DISCONNECT");
    match last {
        Packet::Disconnect(disconnect) => {
            assert_eq!(disconnect.reason, DisconnectReason::MalformedPacket);
        }
        other => panic!("expected DISCONNECT last, got {other:?} after {acks:?}"),
    }
    let acked: Vec<u16> = acks
        .iter()
        .map(|packet| match packet {
            Packet::PubAck(ack) => ack.packet_id.get(),
            other => panic!("expected PUBACK before DISCONNECT, got {other:?}"),
        })
        .collect();
    assert_eq!(acked, (1..=ACKED_MID_READ).collect::<Vec<_>>());

    let error = failure(&mut started.events).await;
    assert!(
        matches!(&error, ClientError::ProtocolViolation(_)),
        "{error:?}"
    );
    let mut completed = BTreeMap::new();
    collect_outcomes(&mut outcomes, &mut completed, OUTBOUND).await;
    for (index, result) in completed {
        assert!(
            result.is_ok(),
            "publish {index} acknowledged before the failure: {result:?}"
        );
    }
    for _ in 0..ACKED_MID_READ {
        let message = next(&mut messages).await;
        assert_eq!(&message.payload[..], b"m");
    }
    drop(started);
    drop(peer);
    drop(broker);
    baseline.assert_back().await;
    while let Ok(message) = messages.try_recv() {
        assert_eq!(
            &message.payload[..],
            b"m",
            "message after the malformed packet"
        );
    }
}

/// Checks a broker that resets the connection while the client's stream is full: the
/// group goes down with an I/O error or the end of the stream, every caller gets one
/// result, and no actor, task or socket is left.
#[actix_rt::test]
async fn reset_mid_write_completes_every_caller() {
    const PUBLISHES: usize = 160;
    let _serial = SERIAL.lock().await;
    let baseline = Resources::now();
    let (broker, mut started, mut peer) = connected(|o| o).await;
    let (recipient, mut messages) = forward::<mqttlink::Message>();
    started.client.set_default_recipient(recipient.recipient());

    let (outcome_sender, mut outcomes) = mpsc::unbounded_channel();
    for index in 0..PUBLISHES {
        let publish = Publish::new(topic("out"), numbered_payload(index, LARGE)).qos(qos_of(index));
        publish_tagged(&started.client, index, publish, &outcome_sender);
    }
    // A message whose PUBACK waits behind the publishes shows the session wrote them.
    peer.send(&inbound(Delivery::AtLeastOnce(id(1)), "in", b"m"))
        .await;
    next(&mut messages).await;
    assert_client_stream_filled(&started.client, PUBLISHES * LARGE).await;
    peer.reset();

    let error = failure(&mut started.events).await;
    assert!(
        matches!(
            &error,
            ClientError::ConnectionClosed(ClosedBy::Io(_) | ClosedBy::EndOfStream)
        ),
        "{error:?}"
    );
    let mut completed = BTreeMap::new();
    collect_outcomes(&mut outcomes, &mut completed, PUBLISHES).await;
    let failed = completed.values().filter(|result| result.is_err()).count();
    assert!(failed > 0, "every publish reported done after a reset");
    for (index, result) in &completed {
        if qos_of(*index) != QoS::AtMostOnce {
            assert!(
                result.is_err(),
                "publish {index} never acknowledged: {result:?}"
            );
        }
    }
    drop(started);
    drop(broker);
    baseline.assert_back().await;
}

/// Checks publishes queued just before the broker resets the connection, when the
/// session may not have taken them from the queue yet. After the reconnect, each
/// reaches the broker once and in order, and each caller gets one result.
#[actix_rt::test]
async fn publishes_queued_before_reset_sent_once() {
    const PUBLISHES: usize = 8;
    let _serial = SERIAL.lock().await;
    let baseline = Resources::now();
    let (broker, mut started, peer) = connected(|o| {
        o.reconnect(true)
            .reconnect_backoff(std::time::Duration::from_millis(1), STEP)
    })
    .await;

    let (outcome_sender, mut outcomes) = mpsc::unbounded_channel();
    for index in 0..PUBLISHES {
        let publish = Publish::new(topic("out"), numbered_payload(index, 16)).qos(QoS::AtLeastOnce);
        publish_tagged(&started.client, index, publish, &outcome_sender);
    }
    peer.reset();

    let mut second = broker.accept().await;
    second.handshake_with(Properties::default()).await;
    let mut events_seen = Vec::new();
    for _ in 0..4 {
        let event = next(&mut started.events).await;
        let connected = matches!(event, Event::Connected { .. });
        events_seen.push(event);
        if connected {
            break;
        }
    }
    assert!(
        matches!(events_seen.last(), Some(Event::Connected { .. })),
        "no second connection: {events_seen:?}"
    );

    let mut received = Vec::new();
    while received.len() < PUBLISHES {
        match second.recv().await {
            Packet::Publish(publish) => {
                received.push(payload_index(&publish.payload));
                let packet_id = publish.delivery.packet_id().unwrap();
                second.send(&puback(packet_id)).await;
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
    assert_eq!(received, (0..PUBLISHES).collect::<Vec<_>>());
    let mut completed = BTreeMap::new();
    collect_outcomes(&mut outcomes, &mut completed, PUBLISHES).await;
    assert_all_ok(completed);

    disconnect_cleanly(started, second, broker, baseline).await;
}

/// Checks a normal disconnect while QoS 1 publishes fill the stream: the session waits
/// for their PUBACKs, and the DISCONNECT reaches the broker after the last of them.
#[actix_rt::test]
async fn disconnect_behind_full_stream_arrives_last() {
    const PUBLISHES: usize = 120;
    let _serial = SERIAL.lock().await;
    let baseline = Resources::now();
    let (broker, started, mut peer) = connected(|o| o.disconnect_timeout(STEP)).await;

    let (outcome_sender, mut outcomes) = mpsc::unbounded_channel();
    for index in 0..PUBLISHES {
        let publish =
            Publish::new(topic("out"), numbered_payload(index, LARGE)).qos(QoS::AtLeastOnce);
        publish_tagged(&started.client, index, publish, &outcome_sender);
    }
    let client = started.client.clone();
    let disconnect = actix_rt::spawn(async move { client.disconnect(Disconnect::new()).await });

    expect_numbered_publishes(&mut peer, PUBLISHES, Acknowledge::Yes).await;
    expect_normal_disconnect(&mut peer).await;
    within(disconnect).await.unwrap().unwrap();
    let mut completed = BTreeMap::new();
    collect_outcomes(&mut outcomes, &mut completed, PUBLISHES).await;
    assert_all_ok(completed);
    drop(started);
    drop(peer);
    drop(broker);
    baseline.assert_back().await;
}

/// Receive buffer of the slow broker's socket, in bytes: small, so the client's stream
/// fills after a few packets.
const SLOW_RECEIVE_BUFFER: u32 = 4096;

/// A broker connection that reads its first `slow_bytes` bytes one byte per read
/// call, and the rest in chunks of up to 64 KiB.
struct SlowPeer {
    stream: TcpStream,
    decoder: Decoder,
    buf: BytesMut,
    slow_bytes: usize,
}

impl SlowPeer {
    /// Listens on 127.0.0.1 with a small receive buffer, which accepted sockets
    /// inherit.
    fn listen() -> TcpListener {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(SLOW_RECEIVE_BUFFER).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        socket.listen(1).unwrap()
    }

    /// Accepts a connection and outcomes its CONNECT with a successful CONNACK.
    async fn accept(listener: &TcpListener, slow_bytes: usize) -> Self {
        let (stream, _) = within(listener.accept()).await.unwrap();
        let mut peer = Self {
            stream,
            decoder: Decoder::for_server(),
            buf: BytesMut::new(),
            slow_bytes,
        };
        assert!(matches!(peer.recv().await, Packet::Connect(_)));
        peer.send(&Packet::ConnAck(ConnAck {
            session_present: false,
            reason: ConnectReason::Success,
            properties: Properties::default().into(),
        }))
        .await;
        peer
    }

    /// Returns the next packet, or `None` once the client closed the connection.
    async fn next(&mut self) -> Option<Packet> {
        let mut chunk = vec![0; 64 * 1024];
        loop {
            if let Some(packet) = self.decoder.decode(&mut self.buf).unwrap() {
                return Some(packet);
            }
            let size = if self.slow_bytes > 0 { 1 } else { chunk.len() };
            let count = within(self.stream.read(&mut chunk[..size]))
                .await
                .unwrap_or(0);
            if count == 0 {
                return None;
            }
            self.slow_bytes = self.slow_bytes.saturating_sub(count);
            self.buf.extend_from_slice(&chunk[..count]);
        }
    }

    async fn recv(&mut self) -> Packet {
        self.next()
            .await
            .expect("client sends a packet before closing")
    }

    async fn send(&mut self, packet: &Packet) {
        let mut bytes = BytesMut::new();
        mqttlink::codec::encode(packet, ProtocolVersion::V5, u32::MAX, &mut bytes).unwrap();
        within(self.stream.write_all(&bytes)).await.unwrap();
    }
}

/// Checks a broker that reads the first 256 KiB one byte at a time, so the client's
/// stream takes a few bytes per write. Meanwhile the client publishes at QoS 0 and 1
/// and acknowledges the broker's QoS 1 messages. Each packet arrives whole and once,
/// the publishes in order, and a normal disconnect ends with DISCONNECT.
#[actix_rt::test]
async fn one_byte_reads_keep_packets_whole() {
    const PUBLISHES: usize = 100;
    const SIZE: usize = LARGE;
    const MESSAGES: u16 = 20;
    let _serial = SERIAL.lock().await;
    let baseline = Resources::now();
    let listener = SlowPeer::listen();
    let url = format!("mqtt://{}", listener.local_addr().unwrap());
    let options = ClientOptions::from_url(&url)
        .unwrap()
        .client_id("write-path")
        .connect_timeout(STEP)
        .disconnect_timeout(STEP);
    let mut started = start(options);
    let mut peer = SlowPeer::accept(&listener, 256 * 1024).await;
    assert!(matches!(
        next(&mut started.events).await,
        Event::Connected { .. }
    ));
    let (recipient, mut messages) = forward::<mqttlink::Message>();
    started.client.set_default_recipient(recipient.recipient());

    let (outcome_sender, mut outcomes) = mpsc::unbounded_channel();
    for index in 0..PUBLISHES {
        let qos = if index % 2 == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        let publish = Publish::new(topic("out"), numbered_payload(index, SIZE)).qos(qos);
        publish_tagged(&started.client, index, publish, &outcome_sender);
    }
    for value in 1..=MESSAGES {
        peer.send(&inbound(Delivery::AtLeastOnce(id(value)), "in", b"m"))
            .await;
    }
    for _ in 0..MESSAGES {
        next(&mut messages).await;
    }
    assert_client_stream_filled(&started.client, PUBLISHES * SIZE).await;

    let mut next_index = 0;
    let mut acknowledged = BTreeSet::new();
    while next_index < PUBLISHES || acknowledged.len() < usize::from(MESSAGES) {
        match peer.recv().await {
            Packet::Publish(publish) => {
                assert_eq!(payload_index(&publish.payload), next_index, "publish order");
                assert_eq!(publish.payload.len(), SIZE, "publish {next_index} length");
                if let Some(packet_id) = publish.delivery.packet_id() {
                    peer.send(&puback(packet_id)).await;
                }
                next_index += 1;
            }
            Packet::PubAck(ack) => {
                assert!(acknowledged.insert(ack.packet_id.get()), "{ack:?} twice");
            }
            other => panic!("expected PUBLISH or PUBACK, got {other:?}"),
        }
    }
    let mut completed = BTreeMap::new();
    collect_outcomes(&mut outcomes, &mut completed, PUBLISHES).await;
    assert_all_ok(completed);

    let client = started.client.clone();
    let disconnect = actix_rt::spawn(async move { client.disconnect(Disconnect::new()).await });
    assert!(matches!(peer.recv().await, Packet::Disconnect(_)));
    assert!(peer.next().await.is_none(), "packet after DISCONNECT");
    within(disconnect).await.unwrap().unwrap();
    drop(started);
    drop(peer);
    drop(listener);
    baseline.assert_back().await;
}

/// Checks a broker that sends the client's whole Receive Maximum of 65,535 QoS 1
/// messages in one burst: the client acknowledges each one once, in order, while it
/// reads.
#[actix_rt::test]
async fn full_receive_window_acknowledged_once() {
    const MESSAGES: u16 = u16::MAX;
    let _serial = SERIAL.lock().await;
    let baseline = Resources::now();
    let (broker, started, mut peer) = connected(|o| o.receive_maximum(MESSAGES)).await;
    let (recipient, mut messages) = forward::<mqttlink::Message>();
    started.client.set_default_recipient(recipient.recipient());

    let bytes = burst(
        &peer,
        (1..=MESSAGES).map(|value| inbound(Delivery::AtLeastOnce(id(value)), "in", b"m")),
    );
    peer.send_raw(&bytes).await;
    for _ in 0..MESSAGES {
        next(&mut messages).await;
    }
    for value in 1..=MESSAGES {
        match peer.recv().await {
            Packet::PubAck(ack) => assert_eq!(ack.packet_id.get(), value, "PUBACK order"),
            other => panic!("expected PUBACK {value}, got {other:?}"),
        }
    }
    disconnect_cleanly(started, peer, broker, baseline).await;
}

/// Checks a normal disconnect while QoS 0 publishes fill the stream. The group stays up
/// until the stream took them, so the broker reads late but still gets every publish
/// whole and then the DISCONNECT. Every caller learns that its publish was written.
#[actix_rt::test]
async fn disconnect_behind_qos0_backlog_arrives_last() {
    const PUBLISHES: usize = 120;
    let _serial = SERIAL.lock().await;
    let baseline = Resources::now();
    let (broker, started, mut peer) = connected(|o| o.disconnect_timeout(STEP)).await;

    let (disconnect, mut outcomes) = disconnect_behind_qos0_backlog(&started.client, PUBLISHES);
    // The session handles the publishes and the disconnect before the broker reads.
    assert_client_stream_filled(&started.client, PUBLISHES * LARGE).await;

    expect_numbered_publishes(&mut peer, PUBLISHES, Acknowledge::No).await;
    expect_normal_disconnect(&mut peer).await;
    within(disconnect).await.unwrap().unwrap();
    let mut completed = BTreeMap::new();
    collect_outcomes(&mut outcomes, &mut completed, PUBLISHES).await;
    for (index, result) in completed {
        assert!(
            result.is_ok(),
            "publish {index} written but completed {result:?}"
        );
    }
    drop(started);
    drop(peer);
    drop(broker);
    baseline.assert_back().await;
}

/// Checks a broker that resets the connection while a normal disconnect still writes a
/// QoS 0 backlog: the disconnect ends without waiting for its timeout, every caller gets
/// one result, and nothing is left.
#[actix_rt::test]
async fn reset_during_final_write_ends_disconnect() {
    const PUBLISHES: usize = 120;
    let _serial = SERIAL.lock().await;
    let baseline = Resources::now();
    // Longer than every wait of the test, so only the reset can end the final write.
    let timeout = STEP * 6;
    let (broker, started, peer) = connected(|o| o.disconnect_timeout(timeout)).await;

    let (disconnect, mut outcomes) = disconnect_behind_qos0_backlog(&started.client, PUBLISHES);
    // The reset must come once the DISCONNECT is encoded, so the session waits for the
    // stream and no longer reads. CONNECT, the publishes and DISCONNECT are encoded then.
    let encoded = u64::try_from(PUBLISHES + 2).unwrap();
    let mut stats = within(started.client.stats()).await.unwrap();
    for _ in 0..1_000 {
        if stats.packets_out == encoded {
            break;
        }
        tokio::task::yield_now().await;
        stats = within(started.client.stats()).await.unwrap();
    }
    assert_eq!(
        stats.packets_out, encoded,
        "DISCONNECT never encoded: {stats:?}"
    );
    assert_stream_filled(&stats, PUBLISHES * LARGE);
    peer.reset();

    within(disconnect).await.unwrap().unwrap();
    let mut completed = BTreeMap::new();
    collect_outcomes(&mut outcomes, &mut completed, PUBLISHES).await;
    let failed = completed.values().filter(|result| result.is_err()).count();
    assert!(failed > 0, "every publish reported written after a reset");
    drop(started);
    drop(broker);
    baseline.assert_back().await;
}

/// Sends, for each message it handles, how many bytes from the client wait unread at
/// the broker at that moment.
struct UnreadAtDelivery {
    broker_fd: RawFd,
    unread: mpsc::UnboundedSender<usize>,
}

impl Actor for UnreadAtDelivery {
    type Context = Context<Self>;
}

impl Handler<mqttlink::Message> for UnreadAtDelivery {
    type Result = ();

    fn handle(&mut self, _: mqttlink::Message, _: &mut Self::Context) {
        let _ = self.unread.send(Peer::unread_at(self.broker_fd));
    }
}

/// Checks that a recipient on the client's thread handles a QoS 1 message before its
/// PUBACK is written, so the message does not wait for the write call. Loopback
/// delivers a written PUBACK at once, so an earlier write shows as unread bytes.
#[actix_rt::test]
async fn recipient_runs_before_puback_write() {
    let _serial = SERIAL.lock().await;
    let (_broker, started, mut peer) = connected(|o| o).await;
    let (unread_sender, mut unread) = mpsc::unbounded_channel();
    let recipient = UnreadAtDelivery {
        broker_fd: peer.raw_fd(),
        unread: unread_sender,
    }
    .start();
    started.client.set_default_recipient(recipient.recipient());

    peer.send(&inbound(Delivery::AtLeastOnce(id(7)), "in", b"m"))
        .await;

    let waiting = within(unread.recv())
        .await
        .expect("recipient handles the message");
    assert_eq!(waiting, 0, "PUBACK was written before the recipient ran");
    assert_eq!(peer.recv().await, puback(id(7)));
}

/// Checks dropping the last handle while QoS 0 publishes fill the stream. The socket
/// writes once more as it stops, and the group completes the publishes whose last bytes
/// this write sent. Each QoS 0 caller gets `Ok` exactly when the broker received its whole
/// PUBLISH, and nothing is left.
#[actix_rt::test]
async fn dropped_handle_answers_written_qos0() {
    const PUBLISHES: usize = 120;
    let _serial = SERIAL.lock().await;
    let baseline = Resources::now();
    let (broker, started, mut peer) = connected(|o| o).await;

    let (outcome_sender, mut outcomes) = mpsc::unbounded_channel();
    for index in 0..PUBLISHES {
        let publish = Publish::new(topic("out"), numbered_payload(index, LARGE));
        publish_tagged(&started.client, index, publish, &outcome_sender);
    }
    assert_client_stream_filled(&started.client, PUBLISHES * LARGE).await;
    drop(started);

    let mut received = BTreeSet::new();
    for packet in peer.until_closed().await {
        match packet {
            Packet::Publish(publish) => {
                assert_eq!(publish.payload.len(), LARGE, "truncated PUBLISH decoded");
                received.insert(payload_index(&publish.payload));
            }
            other => panic!("expected only PUBLISH, got {other:?}"),
        }
    }
    let mut completed = BTreeMap::new();
    collect_outcomes(&mut outcomes, &mut completed, PUBLISHES).await;
    assert!(
        received.len() < PUBLISHES,
        "the broker received every publish, so no caller had to fail"
    );
    for (index, result) in completed {
        if received.contains(&index) {
            assert!(
                result.is_ok(),
                "publish {index} received but got {result:?}"
            );
        } else {
            assert!(
                matches!(result, Err(ClientError::Stopped)),
                "publish {index} never received but got {result:?}"
            );
        }
    }
    drop(peer);
    drop(broker);
    baseline.assert_back().await;
}
