//! The request queue: its byte limit, the policy when it is full, Message Expiry counted
//! down while a publish waits, QoS 0 publishes without a connection, and Session Present
//! when the client has no session state.
//!
//! Most tests drive a scripted fake broker on the loopback interface, because they need
//! exact control over when CONNACK arrives. The expiry test runs on a paused clock. The
//! tests at the end run against a real Mosquitto broker.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "support/actor_broker.rs"]
mod actor_broker;
#[path = "support/mosquitto.rs"]
mod mosquitto;
#[path = "support/reconnect_broker.rs"]
mod reconnect_broker;

use std::future::Future;
use std::time::Duration;

use actor_broker::{assert_actors_back_to, forward, next, STEP};
use mosquitto::Mosquitto;
use mqttlink::codec::{
    ConnAck, ConnectReason, DisconnectReason, Packet, Properties, ProtocolVersion, PubAck,
    PubAckReason, QoS, SubscriptionOptions,
};
use mqttlink::session::ProtocolViolation;
use mqttlink::{
    live_actor_count, Client, ClientError, ClientOptions, Disconnect, DisconnectCause, DropReason,
    Event, Publish, PublishOutcome, QueueFullPolicy, Subscribe,
};
use reconnect_broker::{
    persistent, wait_for_queued, Connection, RestartableMosquitto, ScriptedBroker,
};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;

/// `live_actor_count` is process-wide, so the tests of this file run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Payload of the test publishes: with a topic of 3 bytes, each request counts
/// 2 + 3 + 5 = 10 bytes in the queue.
const PAYLOAD: &str = "12345";

type Outcome = JoinHandle<Result<PublishOutcome, ClientError>>;

fn options(port: u16) -> ClientOptions {
    ClientOptions::new("127.0.0.1", port)
        .client_id("queue-test")
        .session_expiry(Duration::from_secs(60))
        .reconnect(true)
        .reconnect_backoff(Duration::from_millis(1), Duration::from_millis(20))
        .resume_on_reconnect(true)
}

fn start(options: ClientOptions) -> (Client, UnboundedReceiver<Event>) {
    let client = options.start().unwrap();
    let (events, event_rx) = forward::<Event>();
    client.subscribe_events(events.recipient());
    (client, event_rx)
}

fn topic(name: &str) -> mqttlink::codec::TopicName {
    name.parse().unwrap()
}

/// Queues a publish without waiting for room and returns the task awaiting its outcome.
fn try_spawn(client: &Client, publish: Publish) -> Outcome {
    let outcome = client.try_publish(publish).expect("request accepted");
    actix_rt::spawn(outcome)
}

/// Publishes with the waiting [`Client::publish`] in a task of its own.
fn spawn_waiting(client: &Client, publish: Publish) -> Outcome {
    let client = client.clone();
    actix_rt::spawn(async move { client.publish(publish).await })
}

fn publish(name: &str, qos: QoS) -> Publish {
    Publish::new(topic(name), PAYLOAD).qos(qos)
}

fn expiring(name: &str, seconds: Option<u32>) -> Publish {
    let properties = Properties {
        message_expiry_interval: seconds,
        ..Properties::default()
    };
    publish(name, QoS::AtLeastOnce).properties(properties)
}

async fn outcome(task: Outcome) -> Result<PublishOutcome, ClientError> {
    within(task).await.expect("publish task ends normally")
}

async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(STEP, future)
        .await
        .expect("resolves in time")
}

fn expect_publish(packet: Packet) -> mqttlink::codec::Publish {
    match packet {
        Packet::Publish(publish) => publish,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

fn topic_of(publish: &mqttlink::codec::Publish) -> &str {
    publish.topic.as_ref().expect("topic set").as_str()
}

async fn puback(connection: &mut Connection, publish: &mqttlink::codec::Publish) {
    let packet_id = publish.delivery.packet_id().expect("QoS 1 publish");
    connection
        .send(&Packet::PubAck(PubAck {
            packet_id,
            reason: PubAckReason::Success,
            properties: Properties::default().into(),
        }))
        .await;
}

async fn connack(connection: &mut Connection, session_present: bool) {
    connection
        .send(&Packet::ConnAck(ConnAck {
            session_present,
            reason: ConnectReason::Success,
            properties: Properties::default().into(),
        }))
        .await;
}

async fn expect_connected(events: &mut UnboundedReceiver<Event>, present: bool) {
    match next(events).await {
        Event::Connected {
            session_present, ..
        } => assert_eq!(session_present, present, "session present"),
        other => panic!("expected Connected, got {other:?}"),
    }
}

/// Expects Disconnected followed by Reconnecting, and returns the cause.
async fn expect_reconnecting(events: &mut UnboundedReceiver<Event>) -> DisconnectCause {
    let cause = match next(events).await {
        Event::Disconnected { reason } => reason,
        other => panic!("expected Disconnected, got {other:?}"),
    };
    let reconnecting = next(events).await;
    assert!(
        matches!(reconnecting, Event::Reconnecting { .. }),
        "expected Reconnecting, got {reconnecting:?}"
    );
    cause
}

async fn expect_dropped(events: &mut UnboundedReceiver<Event>, name: &str, why: DropReason) {
    match next(events).await {
        Event::RequestDropped { topic, reason } => {
            assert_eq!(
                topic.as_ref().map(mqttlink::codec::TopicName::as_str),
                Some(name)
            );
            assert_eq!(reason, why);
        }
        other => panic!("expected RequestDropped for {name}, got {other:?}"),
    }
}

async fn disconnect(client: &Client) {
    within(client.disconnect(Disconnect::new()))
        .await
        .expect("disconnect succeeds");
}

/// Disconnects, checks that only DISCONNECT reached the broker, drops the last handle
/// and waits until every actor of the client stopped.
async fn finish(client: Client, connection: &mut Connection, baseline: usize) {
    disconnect(&client).await;
    let rest = connection.until_closed().await;
    assert!(
        matches!(rest.as_slice(), [Packet::Disconnect(_)]),
        "expected only DISCONNECT, got {rest:?}"
    );
    drop(client);
    assert_actors_back_to(baseline).await;
}

fn is_session_present_violation(cause: &DisconnectCause) -> bool {
    matches!(
        cause,
        DisconnectCause::Failed(ClientError::ProtocolViolation(
            ProtocolViolation::SessionPresentWithoutSessionState
        ))
    )
}

#[actix_rt::test]
async fn byte_limit_rejects_new_requests() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = ScriptedBroker::bind().await;
    let (client, mut events) = start(options(broker.port()).max_queued_bytes(30));

    // The broker reads CONNECT and sends no CONNACK yet, so every request waits in the queue.
    let mut connection = broker.accept().await;
    connection.expect_connect().await;
    let queued: Vec<Outcome> = ["q/1", "q/2", "q/3"]
        .into_iter()
        .map(|name| try_spawn(&client, publish(name, QoS::AtMostOnce)))
        .collect();
    assert_eq!(wait_for_queued(&client, 3).await, 3);

    let rejected = try_spawn(&client, publish("q/4", QoS::AtMostOnce));
    assert!(matches!(
        outcome(rejected).await,
        Err(ClientError::QueueFull)
    ));
    // The waiting publish waits only for the count limit, so it fails at once too.
    let waiting = spawn_waiting(&client, publish("q/5", QoS::AtMostOnce));
    assert!(matches!(
        outcome(waiting).await,
        Err(ClientError::QueueFull)
    ));
    let oversized = Publish::new(topic("q/6"), vec![b'x'; 40]);
    match outcome(spawn_waiting(&client, oversized)).await {
        Err(ClientError::TooLargeForQueue { size, max }) => {
            assert_eq!(size, 45);
            assert_eq!(max, 30);
        }
        other => panic!("expected TooLargeForQueue, got {other:?}"),
    }
    assert_eq!(
        wait_for_queued(&client, 3).await,
        3,
        "refusals queue nothing"
    );
    let stats = client.stats().await.unwrap();
    // Each topic of three characters takes five bytes with its length prefix.
    assert_eq!(stats.queued_bytes, 3 * (5 + PAYLOAD.len()));
    assert!(!stats.connected, "no CONNACK yet");

    connack(&mut connection, false).await;
    expect_connected(&mut events, false).await;
    for name in ["q/1", "q/2", "q/3"] {
        let sent = expect_publish(connection.recv().await);
        assert_eq!(topic_of(&sent), name);
    }
    let stats = client.stats().await.unwrap();
    assert_eq!(stats.queued_bytes, 0);
    assert!(stats.connected);
    for task in queued {
        assert!(outcome(task).await.is_ok());
    }

    finish(client, &mut connection, baseline).await;
}

#[actix_rt::test]
async fn drop_oldest_keeps_message_in_flight() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = ScriptedBroker::bind().await;
    let options = options(broker.port())
        .max_pending_requests(3)
        .max_inflight(1)
        .queue_full_policy(QueueFullPolicy::DropOldest);
    let (client, mut events) = start(options);
    let mut connection = broker.accept().await;
    connection.accept_connect(false).await;
    expect_connected(&mut events, false).await;

    // One publish in flight and two waiting take the three places.
    let first = try_spawn(&client, publish("q/1", QoS::AtLeastOnce));
    let in_flight = expect_publish(connection.recv().await);
    assert_eq!(topic_of(&in_flight), "q/1");
    let second = try_spawn(&client, publish("q/2", QoS::AtLeastOnce));
    let third = try_spawn(&client, publish("q/3", QoS::AtLeastOnce));
    assert_eq!(wait_for_queued(&client, 2).await, 2);

    // Each new request drops the oldest waiting one, never the one in flight.
    let fourth = try_spawn(&client, publish("q/4", QoS::AtLeastOnce));
    assert!(matches!(
        outcome(second).await,
        Err(ClientError::DroppedFromQueue)
    ));
    expect_dropped(&mut events, "q/2", DropReason::QueueFull).await;
    let fifth = spawn_waiting(&client, publish("q/5", QoS::AtLeastOnce));
    assert!(matches!(
        outcome(third).await,
        Err(ClientError::DroppedFromQueue)
    ));
    expect_dropped(&mut events, "q/3", DropReason::QueueFull).await;
    assert_eq!(wait_for_queued(&client, 2).await, 2);

    puback(&mut connection, &in_flight).await;
    assert!(outcome(first).await.is_ok());
    for (name, task) in [("q/4", fourth), ("q/5", fifth)] {
        let sent = expect_publish(connection.recv().await);
        assert_eq!(topic_of(&sent), name, "dropped requests are never sent");
        puback(&mut connection, &sent).await;
        assert!(outcome(task).await.is_ok());
    }

    finish(client, &mut connection, baseline).await;
}

#[actix_rt::test]
async fn drop_oldest_all_inflight_rejects() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = ScriptedBroker::bind().await;
    let options = options(broker.port())
        .max_pending_requests(1)
        .queue_full_policy(QueueFullPolicy::DropOldest);
    let (client, mut events) = start(options);
    let mut connection = broker.accept().await;
    connection.accept_connect(false).await;
    expect_connected(&mut events, false).await;

    let first = try_spawn(&client, publish("q/1", QoS::AtLeastOnce));
    let in_flight = expect_publish(connection.recv().await);
    let rejected = try_spawn(&client, publish("q/2", QoS::AtLeastOnce));
    assert!(matches!(
        outcome(rejected).await,
        Err(ClientError::QueueFull)
    ));
    let waiting = spawn_waiting(&client, publish("q/3", QoS::AtLeastOnce));
    assert!(matches!(
        outcome(waiting).await,
        Err(ClientError::QueueFull)
    ));

    puback(&mut connection, &in_flight).await;
    assert!(outcome(first).await.is_ok());
    assert!(
        events.try_recv().is_err(),
        "nothing was dropped: {:?}",
        events.try_recv()
    );

    finish(client, &mut connection, baseline).await;
}

#[actix_rt::test]
async fn drop_oldest_makes_room_in_bytes() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = ScriptedBroker::bind().await;
    let options = options(broker.port())
        .max_queued_bytes(25)
        .queue_full_policy(QueueFullPolicy::DropOldest);
    let (client, mut events) = start(options);
    let mut connection = broker.accept().await;
    connection.expect_connect().await;

    let a = try_spawn(&client, publish("q/a", QoS::AtLeastOnce));
    let b = try_spawn(&client, publish("q/b", QoS::AtLeastOnce));
    let c = try_spawn(&client, publish("q/c", QoS::AtLeastOnce));
    assert!(matches!(
        outcome(a).await,
        Err(ClientError::DroppedFromQueue)
    ));
    expect_dropped(&mut events, "q/a", DropReason::QueueFull).await;

    // 2 + 3 + 15 = 20 bytes: both waiting requests must go.
    let large = Publish::new(topic("q/d"), "123456789012345").qos(QoS::AtLeastOnce);
    let d = try_spawn(&client, large);
    for (name, task) in [("q/b", b), ("q/c", c)] {
        assert!(matches!(
            outcome(task).await,
            Err(ClientError::DroppedFromQueue)
        ));
        expect_dropped(&mut events, name, DropReason::QueueFull).await;
    }
    assert_eq!(wait_for_queued(&client, 1).await, 1);

    connack(&mut connection, false).await;
    expect_connected(&mut events, false).await;
    let sent = expect_publish(connection.recv().await);
    assert_eq!(topic_of(&sent), "q/d");
    puback(&mut connection, &sent).await;
    assert!(outcome(d).await.is_ok());

    finish(client, &mut connection, baseline).await;
}

#[actix_rt::test]
async fn drop_oldest_drops_waiting_subscribe() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = ScriptedBroker::bind().await;
    let options = options(broker.port())
        .max_pending_requests(1)
        .queue_full_policy(QueueFullPolicy::DropOldest);
    let (client, mut events) = start(options);
    let mut connection = broker.accept().await;
    connection.expect_connect().await;

    let (messages, mut message_rx) = forward::<mqttlink::Message>();
    let subscriber = client.clone();
    let filter = "s/#".parse().unwrap();
    let subscribe = Subscribe::new(messages.recipient())
        .filter(filter, SubscriptionOptions::with_qos(QoS::AtLeastOnce));
    let subscribed = actix_rt::spawn(async move { subscriber.subscribe(subscribe).await });
    assert_eq!(wait_for_queued(&client, 1).await, 1);

    let publish = try_spawn(&client, publish("q/new", QoS::AtLeastOnce));
    let result = within(subscribed).await.unwrap();
    assert!(
        matches!(result, Err(ClientError::DroppedFromQueue)),
        "{result:?}"
    );
    match next(&mut events).await {
        Event::RequestDropped { topic, reason } => {
            assert_eq!(topic, None, "a subscribe has no topic");
            assert_eq!(reason, DropReason::QueueFull);
        }
        other => panic!("expected RequestDropped, got {other:?}"),
    }

    connack(&mut connection, false).await;
    expect_connected(&mut events, false).await;
    let sent = expect_publish(connection.recv().await);
    assert_eq!(topic_of(&sent), "q/new", "no SUBSCRIBE before it");
    puback(&mut connection, &sent).await;
    assert!(outcome(publish).await.is_ok());

    // The dropped subscribe left no route behind. The client acknowledges a QoS 1
    // message after routing it, so the PUBACK marks the moment to look.
    let packet_id = mqttlink::codec::PacketId::try_from(7).unwrap();
    connection
        .send(&Packet::Publish(mqttlink::codec::Publish {
            dup: false,
            delivery: mqttlink::codec::Delivery::AtLeastOnce(packet_id),
            retain: false,
            topic: Some(topic("s/x")),
            properties: Properties::default().into(),
            payload: "x".into(),
        }))
        .await;
    match connection.recv().await {
        Packet::PubAck(ack) => assert_eq!(ack.packet_id, packet_id),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    let stats = client.stats().await.unwrap();
    assert_eq!(stats.unmatched_messages, 1);
    assert!(
        message_rx.try_recv().is_err(),
        "routed to the dropped subscriber"
    );

    finish(client, &mut connection, baseline).await;
}

#[actix_rt::test]
async fn expired_publish_dropped_on_paused_clock() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = ScriptedBroker::bind().await;
    tokio::time::pause();
    // No keep-alive and a long connect timeout, so no timer fires while the clock moves.
    let options = options(broker.port())
        .keep_alive(Duration::ZERO)
        .connect_timeout(Duration::from_secs(3600));
    let (client, mut events) = start(options);
    let mut connection = broker.accept().await;
    connection.expect_connect().await;

    let stale = try_spawn(&client, expiring("q/stale", Some(5)));
    let fresh = try_spawn(&client, expiring("q/fresh", Some(100)));
    let plain = try_spawn(&client, expiring("q/plain", None));
    assert_eq!(wait_for_queued(&client, 3).await, 3);
    tokio::time::advance(Duration::from_secs(20)).await;
    // From here on the clock runs again, so that no bounded wait below can be skipped
    // ahead by a paused clock while the client reads from the socket.
    tokio::time::resume();

    connack(&mut connection, false).await;
    expect_connected(&mut events, false).await;
    match outcome(stale).await {
        Err(ClientError::Expired { interval }) => assert_eq!(interval, 5),
        other => panic!("expected Expired, got {other:?}"),
    }
    expect_dropped(&mut events, "q/stale", DropReason::Expired).await;

    let sent = expect_publish(connection.recv().await);
    assert_eq!(
        topic_of(&sent),
        "q/fresh",
        "the expired message is not sent"
    );
    assert_eq!(sent.properties.message_expiry_interval, Some(80));
    puback(&mut connection, &sent).await;
    let sent = expect_publish(connection.recv().await);
    assert_eq!(topic_of(&sent), "q/plain");
    assert_eq!(sent.properties.message_expiry_interval, None);
    puback(&mut connection, &sent).await;
    assert!(outcome(fresh).await.is_ok());
    assert!(outcome(plain).await.is_ok());

    finish(client, &mut connection, baseline).await;
}

#[actix_rt::test]
async fn qos0_without_connection_fails_when_off() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = ScriptedBroker::bind().await;
    let options = options(broker.port())
        .queue_qos0_offline(false)
        .max_inflight(1);
    let (client, mut events) = start(options);

    // Before CONNACK: QoS 0 fails at once, QoS 1 waits.
    let mut first = broker.accept().await;
    first.expect_connect().await;
    let early = try_spawn(&client, publish("q/early", QoS::AtMostOnce));
    assert!(matches!(
        outcome(early).await,
        Err(ClientError::NotConnected)
    ));
    let kept = try_spawn(&client, publish("q/kept", QoS::AtLeastOnce));
    connack(&mut first, false).await;
    expect_connected(&mut events, false).await;
    let in_flight = expect_publish(first.recv().await);
    assert_eq!(topic_of(&in_flight), "q/kept");

    // Connected, QoS 0 is queued; behind the full window it is still waiting when the
    // connection ends, and then fails too.
    let waiting = try_spawn(&client, publish("q/waiting", QoS::AtLeastOnce));
    let behind = try_spawn(&client, publish("q/behind", QoS::AtMostOnce));
    assert_eq!(wait_for_queued(&client, 2).await, 2);
    first.cut();
    expect_reconnecting(&mut events).await;
    assert!(matches!(
        outcome(behind).await,
        Err(ClientError::NotConnected)
    ));
    let offline = try_spawn(&client, publish("q/offline", QoS::AtMostOnce));
    assert!(matches!(
        outcome(offline).await,
        Err(ClientError::NotConnected)
    ));

    let mut second = broker.accept().await;
    second.accept_connect(true).await;
    expect_connected(&mut events, true).await;
    let resent = expect_publish(second.recv().await);
    assert!(resent.dup);
    puback(&mut second, &resent).await;
    let sent = expect_publish(second.recv().await);
    assert_eq!(topic_of(&sent), "q/waiting");
    puback(&mut second, &sent).await;
    assert!(outcome(kept).await.is_ok());
    assert!(outcome(waiting).await.is_ok());
    let online = try_spawn(&client, publish("q/online", QoS::AtMostOnce));
    assert!(outcome(online).await.is_ok());
    assert_eq!(topic_of(&expect_publish(second.recv().await)), "q/online");

    finish(client, &mut second, baseline).await;
}

#[actix_rt::test]
async fn session_present_without_state_v5() {
    session_present_without_state(ProtocolVersion::V5).await;
}

#[actix_rt::test]
async fn session_present_without_state_v311() {
    session_present_without_state(ProtocolVersion::V3_1_1).await;
}

/// Checks that a client with no session state closes on Session Present 1, with
/// DISCONNECT 0x82 under v5 and a plain close under 3.1.1, that the next attempt starts
/// clean, and that a later Session Present 1 is accepted once the client has session state.
async fn session_present_without_state(version: ProtocolVersion) {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = ScriptedBroker::bind().await;
    let mut options = ClientOptions::new("127.0.0.1", broker.port())
        .client_id("queue-test")
        .protocol(version)
        .clean_start(false)
        .reconnect(true)
        .reconnect_backoff(Duration::from_millis(1), Duration::from_millis(20));
    if version.is_v5() {
        options = options.session_expiry(Duration::from_secs(60));
    }
    let (client, mut events) = start(options);
    let pending = try_spawn(&client, publish("q/kept", QoS::AtLeastOnce));

    let mut first = broker.accept().await;
    assert!(!first.expect_connect().await.clean_start);
    connack(&mut first, true).await;
    let closing = first.until_closed().await;
    if version.is_v5() {
        match closing.as_slice() {
            [Packet::Disconnect(disconnect)] => {
                assert_eq!(disconnect.reason, DisconnectReason::ProtocolError);
            }
            other => panic!("expected DISCONNECT 0x82, got {other:?}"),
        }
    } else {
        assert!(
            closing.is_empty(),
            "3.1.1 closes without a packet: {closing:?}"
        );
    }
    let cause = expect_reconnecting(&mut events).await;
    assert!(is_session_present_violation(&cause), "cause {cause:?}");

    let mut second = broker.accept().await;
    let connect = second.accept_connect(false).await;
    assert!(
        connect.clean_start,
        "the attempt after the refusal starts clean"
    );
    expect_connected(&mut events, false).await;
    let sent = expect_publish(second.recv().await);
    puback(&mut second, &sent).await;
    assert!(
        outcome(pending).await.is_ok(),
        "the queued publish survives"
    );
    second.cut();
    expect_reconnecting(&mut events).await;

    // Under v5 the session of the clean connection outlives it, so now it may be
    // resumed. Under 3.1.1 a clean session ends with its connection, so the broker has
    // none to report.
    let resumable = version.is_v5();
    let mut third = broker.accept().await;
    let connect = third.accept_connect(resumable).await;
    assert!(!connect.clean_start);
    expect_connected(&mut events, resumable).await;

    finish(client, &mut third, baseline).await;
}

#[actix_rt::test]
async fn adopted_session_accepts_session_present() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = ScriptedBroker::bind().await;
    let options = options(broker.port())
        .clean_start(false)
        .adopt_broker_session(true);
    let (client, mut events) = start(options);

    let mut connection = broker.accept().await;
    connection.accept_connect(true).await;
    expect_connected(&mut events, true).await;

    finish(client, &mut connection, baseline).await;
}

// ---------------------------------------------------------------------------
// Against a real Mosquitto broker

/// Skips the Disconnected and Reconnecting events of failed attempts and returns the
/// next other event.
async fn next_other_event(events: &mut UnboundedReceiver<Event>) -> Event {
    for _ in 0..1000 {
        match next(events).await {
            Event::Disconnected { .. } | Event::Reconnecting { .. } => {}
            other => return other,
        }
    }
    panic!("only reconnect events arrived");
}

#[actix_rt::test]
async fn mosquitto_outage_drops_oldest_queued() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let Some(mut broker) = RestartableMosquitto::start("queue-outage").await else {
        return;
    };
    let port = broker.port();

    let subscriber = persistent(port, "outage-subscriber").start().unwrap();
    let (messages, mut message_rx) = forward::<mqttlink::Message>();
    let filter = "outage/#".parse().unwrap();
    let subscribe = Subscribe::new(messages.recipient())
        .filter(filter, SubscriptionOptions::with_qos(QoS::AtLeastOnce));
    within(subscriber.subscribe(subscribe)).await.unwrap();

    let options = persistent(port, "outage-publisher")
        .max_pending_requests(5)
        .queue_full_policy(QueueFullPolicy::DropOldest);
    let (publisher, mut events) = start(options);
    expect_connected(&mut events, false).await;

    broker.stop_for_outage().await;
    expect_reconnecting(&mut events).await;
    let outcomes: Vec<Outcome> = (0..8)
        .map(|index| {
            let publish = Publish::new(topic("outage/stream"), index.to_string());
            try_spawn(&publisher, publish.qos(QoS::AtLeastOnce))
        })
        .collect();
    let mut outcomes = outcomes.into_iter();
    for _ in 0..3 {
        let task = outcomes.next().unwrap();
        assert!(matches!(
            outcome(task).await,
            Err(ClientError::DroppedFromQueue)
        ));
        match next_other_event(&mut events).await {
            Event::RequestDropped { reason, .. } => assert_eq!(reason, DropReason::QueueFull),
            other => panic!("expected RequestDropped, got {other:?}"),
        }
    }

    broker.start_again().await;
    for task in outcomes {
        assert!(outcome(task).await.is_ok(), "{}", broker.log_tail());
    }
    let mut received = Vec::new();
    while received.len() < 5 {
        let message = next(&mut message_rx).await;
        received.push(String::from_utf8(message.payload.to_vec()).unwrap());
    }
    assert_eq!(
        received,
        ["3", "4", "5", "6", "7"],
        "the newest five, in order"
    );

    disconnect(&publisher).await;
    disconnect(&subscriber).await;
    drop(publisher);
    drop(subscriber);
    assert_actors_back_to(baseline).await;
}

#[actix_rt::test]
async fn mosquitto_session_without_state_v5() {
    mosquitto_session_without_state(ProtocolVersion::V5).await;
}

#[actix_rt::test]
async fn mosquitto_session_without_state_v311() {
    mosquitto_session_without_state(ProtocolVersion::V3_1_1).await;
}

/// Checks that a new client connecting without clean start to a session that an earlier
/// process left on Mosquitto closes the connection, then connects with clean start.
async fn mosquitto_session_without_state(version: ProtocolVersion) {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let mut options = ClientOptions::new("127.0.0.1", broker.port())
        .client_id("left-behind")
        .protocol(version)
        .clean_start(false);
    if version.is_v5() {
        options = options.session_expiry(Duration::from_secs(300));
    }

    let (earlier, mut earlier_events) = start(options.clone());
    expect_connected(&mut earlier_events, false).await;
    disconnect(&earlier).await;
    drop(earlier);

    let options = options
        .reconnect(true)
        .reconnect_backoff(Duration::from_millis(5), Duration::from_millis(50));
    let (client, mut events) = start(options);
    let cause = expect_reconnecting(&mut events).await;
    assert!(is_session_present_violation(&cause), "cause {cause:?}");
    expect_connected(&mut events, false).await;

    disconnect(&client).await;
    drop(client);
    assert_actors_back_to(baseline).await;
}
