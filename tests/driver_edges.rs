//! The session driver at the edges of a connection's life. The link goes down while a
//! delivery waits for room in a full mailbox or a drain of the request queue is due. A
//! requested disconnect has to flush a full socket. Reconnects happen while QoS 2
//! messages wait for a recipient that runs on another thread. Each case runs against a
//! fake broker on the loopback interface, for MQTT 5.0 and 3.1.1.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "support/actor_broker.rs"]
mod actor_broker;
#[path = "support/reconnect_broker.rs"]
mod reconnect_broker;
#[path = "support/slow_recipient.rs"]
mod slow_recipient;

use std::collections::BTreeMap;
use std::time::Duration;

use actor_broker::{assert_actors_back_to, next, BrokerConnection, FakeBroker, Gate, STEP};
use bytes::{Bytes, BytesMut};
use mqttlink::codec::{
    ConnAck, ConnectReason, Delivery, Packet, PacketId, Properties, ProtocolVersion, PubCompReason,
    PubRel, QoS,
};
use mqttlink::{live_actor_count, Client, ClientError, ClientOptions, Disconnect, Publish};
use reconnect_broker::ScriptedBroker;
use slow_recipient::SlowRecipient;
use tokio::sync::mpsc;

/// `live_actor_count` is process-wide, so the tests of this file run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const VERSIONS: [ProtocolVersion; 2] = [ProtocolVersion::V5, ProtocolVersion::V3_1_1];

fn id(value: u16) -> PacketId {
    PacketId::try_from(value).unwrap()
}

fn inbound(delivery: Delivery, dup: bool, topic: &str, payload: Bytes) -> Packet {
    Packet::Publish(mqttlink::codec::Publish {
        dup,
        delivery,
        retain: false,
        topic: Some(topic.parse().unwrap()),
        properties: Properties::default().into(),
        payload,
    })
}

fn pubrel(packet_id: PacketId) -> Packet {
    Packet::PubRel(PubRel {
        packet_id,
        reason: PubCompReason::Success,
        properties: Properties::default().into(),
    })
}

/// Publishes in a task of its own and returns the task's handle.
fn spawn_publish(
    client: &Client,
    topic: &str,
    payload: Bytes,
    qos: QoS,
) -> tokio::task::JoinHandle<Result<mqttlink::PublishOutcome, ClientError>> {
    let client = client.clone();
    let publish = Publish::new(topic.parse().unwrap(), payload).qos(qos);
    actix_rt::spawn(async move { client.publish(publish).await })
}

/// Waits for a publish task and returns its result, or `None` when it did not resolve
/// within `STEP`.
async fn resolves(
    task: tokio::task::JoinHandle<Result<mqttlink::PublishOutcome, ClientError>>,
) -> Option<Result<mqttlink::PublishOutcome, ClientError>> {
    match tokio::time::timeout(STEP, task).await {
        Ok(joined) => Some(joined.expect("publish task ends normally")),
        Err(_) => None,
    }
}

/// How the link of a connection goes down.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// The broker closes its sending side, so the client reads the end of the stream.
    EndOfStream,
    /// The broker resets the connection.
    Reset,
    /// The broker sends a second CONNACK, which breaks the protocol.
    SecondConnAck,
    /// The caller disconnects, and the broker never acknowledges the publish, so the
    /// disconnect waits for the disconnect timeout.
    Requested,
    /// The caller disconnects, and the broker acknowledges the publish meanwhile.
    RequestedThenAck,
}

const FAULTS: [Fault; 5] = [
    Fault::EndOfStream,
    Fault::Reset,
    Fault::SecondConnAck,
    Fault::Requested,
    Fault::RequestedThenAck,
];

/// Has the gate hold QoS 1 message "a", fills its mailbox with QoS 2 message "b", and
/// sends QoS 1 message "c" and QoS 2 message "d", which wait behind the full mailbox.
/// A PUBREL for an identifier with no flow in the same write as "c" and "d" shows by
/// its PUBCOMP that the client read them.
async fn block_gate(
    connection: &mut BrokerConnection,
    seen: &mut mpsc::UnboundedReceiver<Bytes>,
    what: &str,
) {
    let a = inbound(Delivery::AtLeastOnce(id(1)), false, "g", "a".into());
    connection.send(&a).await;
    assert!(
        matches!(connection.recv().await, Packet::PubAck(ack) if ack.packet_id == id(1)),
        "{what}: PUBACK for a"
    );
    assert_eq!(next(seen).await, "a", "{what}");
    let b = inbound(Delivery::ExactlyOnce(id(2)), false, "g", "b".into());
    connection.send(&b).await;
    assert!(
        matches!(connection.recv().await, Packet::PubRec(rec) if rec.packet_id == id(2)),
        "{what}: PUBREC for b"
    );

    let mut write = connection.encode(&inbound(
        Delivery::AtLeastOnce(id(3)),
        false,
        "g",
        "c".into(),
    ));
    write.extend_from_slice(&connection.encode(&inbound(
        Delivery::ExactlyOnce(id(4)),
        false,
        "g",
        "d".into(),
    )));
    write.extend_from_slice(&connection.encode(&pubrel(id(99))));
    connection.send_raw(&write).await;
    let probe = connection.recv().await;
    assert!(
        matches!(&probe, Packet::PubComp(comp) if comp.packet_id == id(99)),
        "{what}: expected only PUBCOMP for the probe while c and d wait, got {probe:?}"
    );
}

/// Checks, for each way a link goes down and each protocol version, that a client
/// whose delivery waits for room in a full mailbox ends. An unacknowledged publish
/// resolves, a requested disconnect returns, the actors stop, and a later publish fails
/// at once.
#[actix_rt::test]
async fn link_down_while_delivery_blocked() {
    let _serial = SERIAL.lock().await;
    for version in VERSIONS {
        for fault in FAULTS {
            let what = format!("{version:?} {fault:?}");
            check_link_down_while_blocked(version, fault, &what).await;
        }
    }
}

async fn check_link_down_while_blocked(version: ProtocolVersion, fault: Fault, what: &str) {
    let baseline = live_actor_count();
    let broker = FakeBroker::bind().await;
    let client = ClientOptions::from_url(&broker.url())
        .unwrap()
        .client_id("blocked-down")
        .protocol(version)
        .keep_alive(Duration::ZERO)
        .disconnect_timeout(Duration::from_millis(500))
        .start()
        .unwrap();
    let (gate, release, mut seen) = Gate::start_closed();
    client.set_default_recipient(gate.recipient());
    let mut connection = broker.accept().await;
    connection.handshake().await;
    block_gate(&mut connection, &mut seen, what).await;

    // An outbound QoS 1 publish the broker never acknowledges.
    let publish = spawn_publish(&client, "out", "p".into(), QoS::AtLeastOnce);
    let sent = match connection.recv().await {
        Packet::Publish(publish) => publish,
        other => panic!("{what}: expected PUBLISH, got {other:?}"),
    };

    match fault {
        Fault::EndOfStream => connection.shutdown_write().await,
        Fault::Reset => connection.reset(),
        Fault::SecondConnAck => {
            let connack = Packet::ConnAck(ConnAck {
                session_present: false,
                reason: ConnectReason::Success,
                properties: Properties::default().into(),
            });
            connection.send(&connack).await;
        }
        Fault::Requested => {
            let disconnect = tokio::time::timeout(STEP, client.disconnect(Disconnect::new()))
                .await
                .unwrap_or_else(|_| panic!("{what}: disconnect returns in time"));
            assert!(
                disconnect.is_ok(),
                "{what}: disconnect failed: {disconnect:?}"
            );
            let rest = connection.until_closed().await;
            assert!(
                matches!(rest.as_slice(), [Packet::Disconnect(_)]),
                "{what}: expected only DISCONNECT, got {rest:?}"
            );
        }
        Fault::RequestedThenAck => {
            let disconnecting = {
                let client = client.clone();
                actix_rt::spawn(async move { client.disconnect(Disconnect::new()).await })
            };
            let packet_id = sent.delivery.packet_id().unwrap();
            let ack = Packet::PubAck(mqttlink::codec::PubAck {
                packet_id,
                reason: mqttlink::codec::PubAckReason::Success,
                properties: Properties::default().into(),
            });
            connection.send(&ack).await;
            let rest = connection.until_closed().await;
            assert!(
                matches!(rest.as_slice(), [Packet::Disconnect(_)]),
                "{what}: expected only DISCONNECT, got {rest:?}"
            );
            let disconnected = tokio::time::timeout(STEP, disconnecting).await;
            assert!(
                matches!(disconnected, Ok(Ok(Ok(())))),
                "{what}: disconnect result {disconnected:?}"
            );
        }
    }

    let outcome = resolves(publish).await;
    if matches!(fault, Fault::RequestedThenAck) {
        assert!(
            matches!(outcome, Some(Ok(_))),
            "{what}: publish acknowledged before DISCONNECT: {outcome:?}"
        );
    } else {
        assert!(
            matches!(outcome, Some(Err(_))),
            "{what}: unacknowledged publish after the link went down: {outcome:?}"
        );
    }
    assert_actors_back_to(baseline).await;
    let late = tokio::time::timeout(
        STEP,
        client.publish(Publish::new("out".parse().unwrap(), "late")),
    )
    .await;
    assert!(
        matches!(late, Ok(Err(ClientError::Stopped))),
        "{what}: publish after the client stopped: {late:?}"
    );
    drop(release);
}

/// Number of 64 KiB publishes the two disconnect tests queue: enough to fill the
/// client's socket while the broker does not read.
const BIG_PUBLISHES: usize = 96;

/// A client of a new fake broker whose default recipient is a closed gate with a
/// delivery waiting for room. The two tests of a disconnect behind a full socket use it.
struct BlockedClient {
    _broker: FakeBroker,
    client: Client,
    connection: BrokerConnection,
    /// The sender that opens the gate, also when dropped.
    release: tokio::sync::oneshot::Sender<()>,
}

impl BlockedClient {
    async fn connect(version: ProtocolVersion, client_id: &str, timeout: Duration) -> Self {
        let what = format!("{version:?}");
        let broker = FakeBroker::bind().await;
        let client = ClientOptions::from_url(&broker.url())
            .unwrap()
            .client_id(client_id)
            .protocol(version)
            .keep_alive(Duration::ZERO)
            .max_pending_requests(4 * BIG_PUBLISHES)
            .disconnect_timeout(timeout)
            .start()
            .unwrap();
        let (gate, release, mut seen) = Gate::start_closed();
        client.set_default_recipient(gate.recipient());
        let mut connection = broker.accept().await;
        connection.handshake().await;
        block_gate(&mut connection, &mut seen, &what).await;
        Self {
            _broker: broker,
            client,
            connection,
            release,
        }
    }
}

/// Checks, for both protocol versions, that publishes queued just before a requested
/// disconnect leave before DISCONNECT while the broker does not read, the socket is
/// full and a delivery waits for room in a full mailbox. The broker reads again after a
/// pause shorter than the disconnect timeout, so every byte must arrive. The publishes
/// are QoS 0, so the disconnect waits for no acknowledgement and DISCONNECT is queued
/// behind them at once.
#[actix_rt::test]
async fn disconnect_flushes_full_socket_in_order() {
    const PUBLISHES: usize = BIG_PUBLISHES;
    const PAYLOAD: usize = 64 * 1024;

    let _serial = SERIAL.lock().await;
    for version in VERSIONS {
        let what = format!("{version:?}");
        let baseline = live_actor_count();
        let blocked = BlockedClient::connect(version, "full-socket", Duration::from_secs(4)).await;
        let BlockedClient {
            _broker,
            client,
            mut connection,
            release,
        } = blocked;

        // The publishes are all queued in the same turn as the disconnect.
        let mut outcomes = Vec::new();
        for index in 0..PUBLISHES {
            let mut payload = vec![b'x'; PAYLOAD];
            payload[..index.to_string().len()].copy_from_slice(index.to_string().as_bytes());
            let publish = Publish::new("big".parse().unwrap(), payload);
            outcomes.push(client.try_publish(publish).unwrap());
        }
        let disconnecting = {
            let client = client.clone();
            actix_rt::spawn(async move { client.disconnect(Disconnect::new()).await })
        };

        // The broker stops reading long enough for the client's socket to fill.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let packets = connection.until_closed().await;
        let publishes: Vec<usize> = packets
            .iter()
            .filter_map(|packet| match packet {
                Packet::Publish(publish) => {
                    let digits: Vec<u8> = publish
                        .payload
                        .iter()
                        .copied()
                        .take_while(u8::is_ascii_digit)
                        .collect();
                    Some(String::from_utf8(digits).unwrap().parse().unwrap())
                }
                _ => None,
            })
            .collect();
        let expected: Vec<usize> = (0..PUBLISHES).collect();
        assert_eq!(publishes, expected, "{what}: publishes before DISCONNECT");
        assert!(
            matches!(packets.last(), Some(Packet::Disconnect(_))),
            "{what}: last packet {:?}",
            packets.last().map(Packet::packet_type)
        );

        let disconnected = tokio::time::timeout(STEP, disconnecting).await;
        assert!(
            matches!(disconnected, Ok(Ok(Ok(())))),
            "{what}: disconnect result {disconnected:?}"
        );
        for (index, outcome) in outcomes.into_iter().enumerate() {
            let outcome = tokio::time::timeout(STEP, outcome).await;
            assert!(outcome.is_ok(), "{what}: publish {index} never resolved");
        }
        assert_actors_back_to(baseline).await;
        drop(release);
    }
}

/// Checks that publishes queued in the same turn as the link goes down all resolve and
/// the actors stop, whether the session drained them before the end of the stream or
/// not. The broker closes at a slightly different moment in each round.
#[actix_rt::test]
async fn publishes_queued_as_link_drops_resolve() {
    const ROUNDS: u64 = 30;
    const PUBLISHES: usize = 8;

    let _serial = SERIAL.lock().await;
    for round in 0..ROUNDS {
        let version = VERSIONS[usize::try_from(round % 2).unwrap()];
        let what = format!("round {round} {version:?}");
        let baseline = live_actor_count();
        let broker = FakeBroker::bind().await;
        let client = ClientOptions::from_url(&broker.url())
            .unwrap()
            .client_id("queued-drop")
            .protocol(version)
            .keep_alive(Duration::ZERO)
            .start()
            .unwrap();
        let mut connection = broker.accept().await;
        connection.handshake().await;
        let (gate, release, mut seen) = Gate::start_closed();
        client.set_default_recipient(gate.recipient());
        if round % 3 == 0 {
            block_gate(&mut connection, &mut seen, &what).await;
        }

        let mut outcomes = Vec::new();
        for index in 0..PUBLISHES {
            let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][index % 3];
            let publish = Publish::new("q".parse().unwrap(), index.to_string()).qos(qos);
            outcomes.push(client.try_publish(publish).unwrap());
        }
        if round % 2 == 0 {
            tokio::time::sleep(Duration::from_micros(round * 20)).await;
        }
        if round % 4 < 2 {
            connection.reset();
        } else {
            connection.shutdown_write().await;
        }

        for (index, outcome) in outcomes.into_iter().enumerate() {
            let outcome = tokio::time::timeout(STEP, outcome).await;
            assert!(outcome.is_ok(), "{what}: publish {index} never resolved");
        }
        assert_actors_back_to(baseline).await;
        drop(release);
    }
}

/// Options for a client of `broker` that reconnects and resumes its session, with
/// keep-alive off. The caller sets the reconnect backoff.
fn resuming(broker: &ScriptedBroker, client_id: &str, version: ProtocolVersion) -> ClientOptions {
    ClientOptions::new("127.0.0.1", broker.port())
        .client_id(client_id)
        .protocol(version)
        .keep_alive(Duration::ZERO)
        .clean_start(false)
        .session_expiry(Duration::from_secs(60))
        .reconnect(true)
        .resume_on_reconnect(true)
}

/// Takes the payloads the recipient passes on until the one named "marker", and
/// checks that the messages numbered 1 to `messages` each came exactly once.
async fn assert_each_once(seen: &mut mpsc::UnboundedReceiver<Bytes>, messages: u16, what: &str) {
    let mut copies: BTreeMap<String, usize> = BTreeMap::new();
    loop {
        let payload = next(seen).await;
        if payload == "marker" {
            break;
        }
        *copies
            .entry(String::from_utf8(payload.to_vec()).unwrap())
            .or_default() += 1;
    }
    let expected: BTreeMap<String, usize> =
        (1..=messages).map(|index| (index.to_string(), 1)).collect();
    assert_eq!(copies, expected, "{what}: copies per message");
}

/// Checks, for both protocol versions, QoS 2 messages cut off while they wait for a
/// slow recipient on another thread. The broker sends them again on the resumed
/// session, and each must reach the recipient exactly once and complete its flow.
#[actix_rt::test]
async fn qos2_across_cuts_delivered_once() {
    let _serial = SERIAL.lock().await;
    for version in VERSIONS {
        for cut_after in [0, 1, 3, 6] {
            let what = format!("{version:?}, cut after {cut_after} PUBREC");
            check_qos2_across_cut(version, cut_after, &what).await;
        }
    }
}

async fn check_qos2_across_cut(version: ProtocolVersion, cut_after: usize, what: &str) {
    const MESSAGES: u16 = 12;

    let baseline = live_actor_count();
    let broker = ScriptedBroker::bind().await;
    let client = resuming(&broker, "qos2-cut", version)
        .reconnect_backoff(Duration::from_millis(1), Duration::from_millis(5))
        .start()
        .unwrap();
    let (slow, mut seen) = SlowRecipient::start(Duration::from_millis(3));
    client.set_default_recipient(slow.recipient.clone());

    let mut connection = broker.accept().await;
    connection.accept_connect(false).await;
    let mut burst = BytesMut::new();
    for packet_id in 1..=MESSAGES {
        let packet = inbound(
            Delivery::ExactlyOnce(id(packet_id)),
            false,
            "e",
            packet_id.to_string().into(),
        );
        burst.extend_from_slice(&connection.encode(&packet));
    }
    connection.send_raw(&burst).await;
    let mut received = Vec::new();
    for _ in 0..cut_after {
        match connection.recv().await {
            Packet::PubRec(rec) => received.push(rec.packet_id),
            other => panic!("{what}: expected PUBREC, got {other:?}"),
        }
    }
    connection.cut();

    // The resumed session: PUBREL for what got PUBREC, the rest again with DUP.
    let mut connection = broker.accept().await;
    connection.accept_connect(true).await;
    let mut write = BytesMut::new();
    for packet_id in 1..=MESSAGES {
        let packet = if received.contains(&id(packet_id)) {
            pubrel(id(packet_id))
        } else {
            inbound(
                Delivery::ExactlyOnce(id(packet_id)),
                true,
                "e",
                packet_id.to_string().into(),
            )
        };
        write.extend_from_slice(&connection.encode(&packet));
    }
    connection.send_raw(&write).await;
    let mut completed = 0;
    while completed < MESSAGES {
        match connection.recv().await {
            Packet::PubRec(rec) => connection.send(&pubrel(rec.packet_id)).await,
            Packet::PubComp(_) => completed += 1,
            other => panic!("{what}: expected PUBREC or PUBCOMP, got {other:?}"),
        }
    }
    let marker = inbound(Delivery::AtMostOnce, false, "e", "marker".into());
    connection.send(&marker).await;

    assert_each_once(&mut seen, MESSAGES, what).await;
    slow.finish(&client, baseline).await;
}

/// Checks, for both protocol versions, a requested disconnect whose DISCONNECT sits
/// behind a full socket while a delivery waits for room in a full mailbox. The broker
/// never reads, so the disconnect must end after the disconnect timeout with the
/// actors stopped.
#[actix_rt::test]
async fn disconnect_times_out_on_stalled_broker() {
    const PUBLISHES: usize = BIG_PUBLISHES;
    const PAYLOAD: usize = 64 * 1024;

    let _serial = SERIAL.lock().await;
    for version in VERSIONS {
        let what = format!("{version:?}");
        let baseline = live_actor_count();
        let blocked =
            BlockedClient::connect(version, "stalled-flush", Duration::from_millis(300)).await;
        let BlockedClient {
            _broker,
            client,
            mut connection,
            release,
        } = blocked;

        let mut outcomes = Vec::new();
        for _ in 0..PUBLISHES {
            let publish = Publish::new("big".parse().unwrap(), vec![b'x'; PAYLOAD]);
            outcomes.push(client.try_publish(publish).unwrap());
        }
        let disconnected = tokio::time::timeout(STEP, client.disconnect(Disconnect::new())).await;
        assert!(
            matches!(disconnected, Ok(Ok(()))),
            "{what}: disconnect result {disconnected:?}"
        );
        for (index, outcome) in outcomes.into_iter().enumerate() {
            let outcome = tokio::time::timeout(STEP, outcome).await;
            assert!(outcome.is_ok(), "{what}: publish {index} never resolved");
        }
        assert_actors_back_to(baseline).await;

        // The client closed its end, so the broker reads what was sent and then the end.
        let _ = connection.until_closed().await;
        drop(release);
    }
}

/// The broker's side of one inbound QoS 2 flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlowState {
    /// PUBLISH sent, no PUBREC yet.
    Published,
    /// PUBREC received and PUBREL sent, no PUBCOMP yet.
    Released,
    /// PUBCOMP received.
    Completed,
}

/// Checks, for both protocol versions, QoS 2 messages to a slow recipient on another
/// thread across several cuts in a row. Each connection is cut after a few packets from
/// the client, and the broker resumes every open flow on the next one. Each message
/// must reach the recipient exactly once and complete its flow.
#[actix_rt::test]
async fn qos2_across_repeated_cuts_once() {
    let _serial = SERIAL.lock().await;
    for version in VERSIONS {
        for cuts in [&[0, 0, 0][..], &[1, 0, 2], &[2, 3, 1, 0], &[5, 5, 5]] {
            let what = format!("{version:?}, cuts after {cuts:?} packets");
            check_qos2_repeated_cuts(version, cuts, &what).await;
        }
    }
}

async fn check_qos2_repeated_cuts(version: ProtocolVersion, cuts: &[usize], what: &str) {
    const MESSAGES: u16 = 10;

    let baseline = live_actor_count();
    let broker = ScriptedBroker::bind().await;
    let client = resuming(&broker, "qos2-cuts", version)
        .reconnect_backoff(Duration::from_millis(1), Duration::from_millis(5))
        .start()
        .unwrap();
    let (slow, mut seen) = SlowRecipient::start(Duration::from_millis(2));
    client.set_default_recipient(slow.recipient.clone());

    let mut flows: BTreeMap<u16, FlowState> = (1..=MESSAGES)
        .map(|packet_id| (packet_id, FlowState::Published))
        .collect();
    for (index, &cut_after) in cuts.iter().chain(std::iter::once(&usize::MAX)).enumerate() {
        let mut connection = broker.accept().await;
        connection.accept_connect(index > 0).await;
        let mut write = BytesMut::new();
        for (&packet_id, &state) in &flows {
            let packet = match state {
                FlowState::Published => inbound(
                    Delivery::ExactlyOnce(id(packet_id)),
                    index > 0,
                    "e",
                    packet_id.to_string().into(),
                ),
                FlowState::Released => pubrel(id(packet_id)),
                FlowState::Completed => continue,
            };
            write.extend_from_slice(&connection.encode(&packet));
        }
        connection.send_raw(&write).await;

        let mut read = 0;
        while read < cut_after && flows.values().any(|state| *state != FlowState::Completed) {
            read += 1;
            match connection.recv().await {
                Packet::PubRec(rec) => {
                    let state = flows.get_mut(&rec.packet_id.get()).unwrap();
                    assert_ne!(*state, FlowState::Completed, "{what}: PUBREC after PUBCOMP");
                    *state = FlowState::Released;
                    connection.send(&pubrel(rec.packet_id)).await;
                }
                Packet::PubComp(comp) => {
                    *flows.get_mut(&comp.packet_id.get()).unwrap() = FlowState::Completed;
                }
                other => panic!("{what}: expected PUBREC or PUBCOMP, got {other:?}"),
            }
        }
        if cut_after == usize::MAX {
            let marker = inbound(Delivery::AtMostOnce, false, "e", "marker".into());
            connection.send(&marker).await;
            break;
        }
        connection.cut();
    }

    assert_each_once(&mut seen, MESSAGES, what).await;
    slow.finish(&client, baseline).await;
}

/// Checks, for both protocol versions, that a keep-alive timeout while a delivery waits
/// for room in a full mailbox ends the client. The broker sends no PINGRESP, so the
/// client gives up after one keep-alive interval past the PINGREQ.
#[actix_rt::test]
async fn keep_alive_timeout_while_blocked() {
    let _serial = SERIAL.lock().await;
    for version in VERSIONS {
        let what = format!("{version:?}");
        let baseline = live_actor_count();
        let broker = FakeBroker::bind().await;
        let client = ClientOptions::from_url(&broker.url())
            .unwrap()
            .client_id("blocked-keep-alive")
            .protocol(version)
            .keep_alive(Duration::from_secs(1))
            .start()
            .unwrap();
        let (gate, release, mut seen) = Gate::start_closed();
        client.set_default_recipient(gate.recipient());
        let mut connection = broker.accept().await;
        connection.handshake().await;
        block_gate(&mut connection, &mut seen, &what).await;
        let publish = spawn_publish(&client, "out", "p".into(), QoS::AtLeastOnce);

        // The broker reads but never replies, so only PUBLISH, PINGREQ and at most a
        // final DISCONNECT come.
        let packets = connection.until_closed().await;
        assert!(
            packets.iter().all(|packet| matches!(
                packet,
                Packet::Publish(_) | Packet::PingReq | Packet::Disconnect(_)
            )),
            "{what}: packets before the close {packets:?}"
        );
        let outcome = resolves(publish).await;
        assert!(
            matches!(outcome, Some(Err(_))),
            "{what}: publish after the keep-alive timeout: {outcome:?}"
        );
        assert_actors_back_to(baseline).await;
        drop(release);
    }
}

/// Checks, for both protocol versions, publishes queued during the reconnect backoff
/// while QoS 1 messages from the lost connection wait for a slow recipient on another
/// thread. Each publish must leave exactly once on the next connection and complete.
#[actix_rt::test]
async fn backoff_publishes_sent_once() {
    const INBOUND: u16 = 8;
    const OUTBOUND: usize = 6;

    let _serial = SERIAL.lock().await;
    for version in VERSIONS {
        let what = format!("{version:?}");
        let baseline = live_actor_count();
        let broker = ScriptedBroker::bind().await;
        let backoff = Duration::from_millis(100);
        let client = resuming(&broker, "backoff-queue", version)
            .reconnect_backoff(backoff, backoff)
            .start()
            .unwrap();
        let (events, mut event_rx) = actor_broker::forward::<mqttlink::Event>();
        client.subscribe_events(events.recipient());
        let (slow, mut seen) = SlowRecipient::start(Duration::from_millis(5));
        client.set_default_recipient(slow.recipient.clone());

        let mut connection = broker.accept().await;
        connection.accept_connect(false).await;
        let mut burst = BytesMut::new();
        for packet_id in 1..=INBOUND {
            let delivery = Delivery::AtLeastOnce(id(packet_id));
            let packet = inbound(delivery, false, "in", packet_id.to_string().into());
            burst.extend_from_slice(&connection.encode(&packet));
        }
        connection.send_raw(&burst).await;
        connection.cut();
        loop {
            match next(&mut event_rx).await {
                mqttlink::Event::Reconnecting { .. } => break,
                mqttlink::Event::Connected { .. } | mqttlink::Event::Disconnected { .. } => {}
                other => panic!("{what}: expected Reconnecting, got {other:?}"),
            }
        }

        let mut outcomes = Vec::new();
        for index in 0..OUTBOUND {
            let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][index % 3];
            let publish = Publish::new("out".parse().unwrap(), index.to_string()).qos(qos);
            outcomes.push(client.try_publish(publish).unwrap());
        }

        let mut connection = broker.accept().await;
        connection.accept_connect(true).await;
        let mut resend = BytesMut::new();
        for packet_id in 1..=INBOUND {
            let delivery = Delivery::AtLeastOnce(id(packet_id));
            let packet = inbound(delivery, true, "in", packet_id.to_string().into());
            resend.extend_from_slice(&connection.encode(&packet));
        }
        connection.send_raw(&resend).await;

        // Reads until every inbound message is acknowledged and every publish has
        // completed its flow, and counts the copies of each outbound publish.
        let mut sent: BTreeMap<String, usize> = BTreeMap::new();
        let mut acked_in = std::collections::BTreeSet::new();
        let mut open_out = 0;
        while acked_in.len() < usize::from(INBOUND) || open_out > 0 || sent.len() < OUTBOUND {
            match connection.recv().await {
                Packet::PubAck(ack) => {
                    acked_in.insert(ack.packet_id.get());
                }
                Packet::Publish(publish) => {
                    let payload = String::from_utf8(publish.payload.to_vec()).unwrap();
                    *sent.entry(payload).or_default() += 1;
                    match publish.delivery {
                        Delivery::AtMostOnce => {}
                        Delivery::AtLeastOnce(packet_id) => {
                            let ack = Packet::PubAck(mqttlink::codec::PubAck {
                                packet_id,
                                reason: mqttlink::codec::PubAckReason::Success,
                                properties: Properties::default().into(),
                            });
                            connection.send(&ack).await;
                        }
                        Delivery::ExactlyOnce(packet_id) => {
                            open_out += 1;
                            let rec = Packet::PubRec(mqttlink::codec::PubRec {
                                packet_id,
                                reason: mqttlink::codec::PubAckReason::Success,
                                properties: Properties::default().into(),
                            });
                            connection.send(&rec).await;
                        }
                    }
                }
                Packet::PubRel(rel) => {
                    let comp = Packet::PubComp(mqttlink::codec::PubComp {
                        packet_id: rel.packet_id,
                        reason: PubCompReason::Success,
                        properties: Properties::default().into(),
                    });
                    connection.send(&comp).await;
                    open_out -= 1;
                }
                other => panic!("{what}: unexpected {other:?}"),
            }
        }
        let expected: BTreeMap<String, usize> =
            (0..OUTBOUND).map(|index| (index.to_string(), 1)).collect();
        assert_eq!(sent, expected, "{what}: copies of each publish sent");
        for (index, outcome) in outcomes.into_iter().enumerate() {
            let outcome = tokio::time::timeout(STEP, outcome).await;
            assert!(
                matches!(outcome, Ok(Ok(_))),
                "{what}: publish {index} result {outcome:?}"
            );
        }
        let marker = inbound(Delivery::AtMostOnce, false, "in", "marker".into());
        connection.send(&marker).await;
        let mut delivered = std::collections::BTreeSet::new();
        loop {
            let payload = next(&mut seen).await;
            if payload == "marker" {
                break;
            }
            delivered.insert(String::from_utf8(payload.to_vec()).unwrap());
        }
        assert_eq!(
            delivered.len(),
            usize::from(INBOUND),
            "{what}: {delivered:?}"
        );

        slow.finish(&client, baseline).await;
    }
}
