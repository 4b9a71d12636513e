//! Automatic reconnect against a scripted fake broker on the loopback interface.
//!
//! The tests cover resending unacknowledged flows after a cut, subscribing again when the
//! session is gone, stopping on fatal CONNACK codes and retrying on transient ones,
//! failover, and ending cleanly while a reconnect is pending. Backoff delays are a few
//! milliseconds, and no test reads the wall clock.

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

use std::time::Duration;

use actor_broker::{assert_actors_back_to, forward, next, STEP};
use mqttlink::codec::{
    ConnectReason, Delivery, Packet, PacketId, Properties, ProtocolVersion, PubAck, PubAckReason,
    PubComp, PubCompReason, PubRec, QoS, SubAck, SubAckReason, SubscriptionOptions,
};
use mqttlink::{
    live_actor_count, Client, ClientError, ClientOptions, ClosedBy, Disconnect, DisconnectCause,
    Event, Publish, PublishOutcome, Subscribe,
};
use reconnect_broker::{Connection, RestartableMosquitto, ScriptedBroker};
use tokio::sync::mpsc::UnboundedReceiver;

/// `live_actor_count` is process-wide, so the tests of this file run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const BASE: Duration = Duration::from_millis(1);
const MAX: Duration = Duration::from_millis(20);

fn options(port: u16) -> ClientOptions {
    ClientOptions::new("127.0.0.1", port)
        .client_id("reconnect-test")
        .session_expiry(Duration::from_secs(60))
        .reconnect(true)
        .reconnect_backoff(BASE, MAX)
        .resume_on_reconnect(true)
}

/// Starts a client and returns it with its event stream.
fn start(options: ClientOptions) -> (Client, UnboundedReceiver<Event>) {
    let client = options.start().unwrap();
    let (events, event_rx) = forward::<Event>();
    client.subscribe_events(events.recipient());
    (client, event_rx)
}

fn topic(name: &str) -> mqttlink::codec::TopicName {
    name.parse().unwrap()
}

/// Publishes in a task of its own and returns the task's handle.
fn spawn_publish(
    client: &Client,
    name: &str,
    qos: QoS,
) -> tokio::task::JoinHandle<Result<PublishOutcome, ClientError>> {
    let client = client.clone();
    let publish = Publish::new(topic(name), name.to_owned()).qos(qos);
    actix_rt::spawn(async move { client.publish(publish).await })
}

async fn outcome(
    task: tokio::task::JoinHandle<Result<PublishOutcome, ClientError>>,
) -> Result<PublishOutcome, ClientError> {
    tokio::time::timeout(STEP, task)
        .await
        .expect("publish resolves in time")
        .expect("publish task ends normally")
}

fn expect_publish(packet: Packet) -> mqttlink::codec::Publish {
    match packet {
        Packet::Publish(publish) => publish,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

fn packet_id(publish: &mqttlink::codec::Publish) -> PacketId {
    publish.delivery.packet_id().expect("QoS 1 or 2 publish")
}

async fn expect_connected(events: &mut UnboundedReceiver<Event>, present: bool) {
    match next(events).await {
        Event::Connected {
            session_present, ..
        } => assert_eq!(session_present, present),
        other => panic!("expected Connected, got {other:?}"),
    }
}

/// Expects the Disconnected and Reconnecting events of a lost connection and returns
/// the cause and the Reconnecting event.
async fn expect_reconnecting(events: &mut UnboundedReceiver<Event>) -> (DisconnectCause, Event) {
    let cause = match next(events).await {
        Event::Disconnected { reason } => reason,
        other => panic!("expected Disconnected, got {other:?}"),
    };
    let reconnecting = next(events).await;
    assert!(
        matches!(reconnecting, Event::Reconnecting { .. }),
        "expected Reconnecting, got {reconnecting:?}"
    );
    (cause, reconnecting)
}

async fn disconnect(client: &Client) {
    tokio::time::timeout(STEP, client.disconnect(Disconnect::new()))
        .await
        .expect("disconnect resolves in time")
        .expect("disconnect succeeds");
}

/// Reads until the client closes and checks that only DISCONNECT came.
async fn expect_only_disconnect(connection: &mut Connection) {
    let rest = connection.until_closed().await;
    assert!(
        matches!(rest.as_slice(), [Packet::Disconnect(_)]),
        "expected only DISCONNECT, got {rest:?}"
    );
}

#[actix_rt::test]
async fn qos1_publish_resent_with_dup_after_cut() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = ScriptedBroker::bind().await;
    let (client, mut events) = start(options(broker.port()));

    let mut first = broker.accept().await;
    let connect = first.accept_connect(false).await;
    assert!(connect.clean_start, "first connection starts clean");
    expect_connected(&mut events, false).await;

    let in_flight = spawn_publish(&client, "t/first", QoS::AtLeastOnce);
    let sent = expect_publish(first.recv().await);
    assert!(!sent.dup);
    first.cut();

    let (cause, _) = expect_reconnecting(&mut events).await;
    assert!(
        matches!(
            cause,
            DisconnectCause::Failed(ClientError::ConnectionClosed(ClosedBy::EndOfStream))
        ),
        "cause {cause:?}"
    );

    let mut second = broker.accept().await;
    let connect = second.expect_connect().await;
    assert!(!connect.clean_start, "reconnect asks to resume");

    // A publish queued before CONNACK must leave after the resent one.
    let queued = client
        .try_publish(Publish::new(topic("t/second"), "second").qos(QoS::AtLeastOnce))
        .unwrap();
    let queued = actix_rt::spawn(queued);
    client.stats().await.unwrap();
    second
        .send(&Packet::ConnAck(mqttlink::codec::ConnAck {
            session_present: true,
            reason: ConnectReason::Success,
            properties: Properties::default().into(),
        }))
        .await;
    expect_connected(&mut events, true).await;

    let resent = expect_publish(second.recv().await);
    assert!(resent.dup, "resent PUBLISH carries DUP");
    assert_eq!(packet_id(&resent), packet_id(&sent));
    assert_eq!(resent.payload, sent.payload);
    let fresh = expect_publish(second.recv().await);
    assert!(!fresh.dup);
    assert_eq!(fresh.topic, Some(topic("t/second")));
    assert_ne!(packet_id(&fresh), packet_id(&sent));

    for id in [packet_id(&resent), packet_id(&fresh)] {
        second
            .send(&Packet::PubAck(PubAck {
                packet_id: id,
                reason: PubAckReason::Success,
                properties: Properties::default().into(),
            }))
            .await;
    }
    let first_outcome = outcome(in_flight).await.unwrap();
    assert_eq!(first_outcome.reason, Some(PubAckReason::Success));
    let second_outcome = outcome(queued).await.unwrap();
    assert_eq!(second_outcome.reason, Some(PubAckReason::Success));

    disconnect(&client).await;
    expect_only_disconnect(&mut second).await;
    drop(client);
    assert_actors_back_to(baseline).await;
}

#[actix_rt::test]
async fn qos2_after_pubrec_resumes_with_pubrel() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = ScriptedBroker::bind().await;
    let (client, mut events) = start(options(broker.port()));

    let mut first = broker.accept().await;
    first.accept_connect(false).await;
    expect_connected(&mut events, false).await;

    let in_flight = spawn_publish(&client, "t/exactly-once", QoS::ExactlyOnce);
    let sent = expect_publish(first.recv().await);
    let id = packet_id(&sent);
    first
        .send(&Packet::PubRec(PubRec {
            packet_id: id,
            reason: PubAckReason::Success,
            properties: Properties::default().into(),
        }))
        .await;
    match first.recv().await {
        Packet::PubRel(rel) => assert_eq!(rel.packet_id, id),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    first.cut();
    expect_reconnecting(&mut events).await;

    let mut second = broker.accept().await;
    second.accept_connect(true).await;
    expect_connected(&mut events, true).await;
    match second.recv().await {
        Packet::PubRel(rel) => assert_eq!(rel.packet_id, id),
        other => panic!("expected PUBREL after resume, got {other:?}"),
    }
    second
        .send(&Packet::PubComp(PubComp {
            packet_id: id,
            reason: PubCompReason::Success,
            properties: Properties::default().into(),
        }))
        .await;
    let completed = outcome(in_flight).await.unwrap();
    assert_eq!(completed.reason, Some(PubAckReason::Success));

    disconnect(&client).await;
    expect_only_disconnect(&mut second).await;
    drop(client);
    assert_actors_back_to(baseline).await;
}

#[actix_rt::test]
async fn session_lost_triggers_resubscribe() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = ScriptedBroker::bind().await;
    let (client, mut events) = start(options(broker.port()));
    let (messages, mut message_rx) = forward::<mqttlink::Message>();

    let mut first = broker.accept().await;
    first.accept_connect(false).await;
    expect_connected(&mut events, false).await;

    let subscriber = client.clone();
    let filter = "sensors/#".parse().unwrap();
    let subscribe = Subscribe::new(messages.recipient())
        .filter(filter, SubscriptionOptions::with_qos(QoS::AtLeastOnce));
    let subscribed = actix_rt::spawn(async move { subscriber.subscribe(subscribe).await });
    let id = match first.recv().await {
        Packet::Subscribe(subscribe) => subscribe.packet_id,
        other => panic!("expected SUBSCRIBE, got {other:?}"),
    };
    first
        .send(&Packet::SubAck(SubAck {
            packet_id: id,
            reasons: vec![SubAckReason::GrantedQoS1],
            properties: Properties::default().into(),
        }))
        .await;
    tokio::time::timeout(STEP, subscribed)
        .await
        .expect("subscribe resolves in time")
        .unwrap()
        .unwrap();
    first.cut();
    expect_reconnecting(&mut events).await;

    let mut second = broker.accept().await;
    second.accept_connect(false).await;
    expect_connected(&mut events, false).await;
    match next(&mut events).await {
        Event::Resubscribed { filters } => assert_eq!(filters, 1),
        other => panic!("expected Resubscribed, got {other:?}"),
    }
    let again = match second.recv().await {
        Packet::Subscribe(subscribe) => subscribe,
        other => panic!("expected SUBSCRIBE again, got {other:?}"),
    };
    assert_eq!(again.filters.len(), 1);
    assert_eq!(again.filters[0].0.as_str(), "sensors/#");
    assert_eq!(again.filters[0].1.qos, QoS::AtLeastOnce);
    second
        .send(&Packet::SubAck(SubAck {
            packet_id: again.packet_id,
            reasons: vec![SubAckReason::GrantedQoS1],
            properties: Properties {
                ..Properties::default()
            }
            .into(),
        }))
        .await;

    // The route survived the reconnect: a message on the new connection is delivered.
    second
        .send(&Packet::Publish(mqttlink::codec::Publish {
            dup: false,
            delivery: Delivery::AtMostOnce,
            retain: false,
            topic: Some(topic("sensors/a")),
            properties: Properties {
                subscription_identifiers: again.properties.subscription_identifiers.clone(),
                ..Properties::default()
            }
            .into(),
            payload: "21".into(),
        }))
        .await;
    let message = next(&mut message_rx).await;
    assert_eq!(message.topic, topic("sensors/a"));

    disconnect(&client).await;
    expect_only_disconnect(&mut second).await;
    drop(client);
    assert_actors_back_to(baseline).await;
}

#[actix_rt::test]
async fn bad_credentials_stop_without_retry() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = ScriptedBroker::bind().await;
    let (client, mut events) = start(options(broker.port()));
    let pending = spawn_publish(&client, "t/never", QoS::AtLeastOnce);

    let mut first = broker.accept().await;
    first
        .reject_connect(ConnectReason::BadUserNameOrPassword)
        .await;

    match outcome(pending).await {
        Err(ClientError::ConnectRefused { reason, .. }) => {
            assert_eq!(reason, ConnectReason::BadUserNameOrPassword);
        }
        other => panic!("expected ConnectRefused, got {other:?}"),
    }
    match next(&mut events).await {
        Event::Disconnected {
            reason: DisconnectCause::Failed(ClientError::ConnectRefused { .. }),
        } => {}
        other => panic!("expected Disconnected, got {other:?}"),
    }
    // The client stopped, so no later attempt can exist.
    assert_actors_back_to(baseline).await;
    assert!(matches!(client.stats().await, Err(ClientError::Stopped)));
    assert!(
        events.try_recv().is_err(),
        "no Reconnecting after a fatal code"
    );
}

#[actix_rt::test]
async fn server_busy_retries_with_growing_backoff() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = ScriptedBroker::bind().await;
    let (client, mut events) = start(options(broker.port()));
    let pending = spawn_publish(&client, "t/eventually", QoS::AtLeastOnce);

    for expected_attempt in 1..=4_u32 {
        let mut connection = broker.accept().await;
        connection.reject_connect(ConnectReason::ServerBusy).await;
        let (cause, reconnecting) = expect_reconnecting(&mut events).await;
        assert!(
            matches!(
                cause,
                DisconnectCause::Failed(ClientError::ConnectRefused {
                    reason: ConnectReason::ServerBusy,
                    ..
                })
            ),
            "cause {cause:?}"
        );
        let Event::Reconnecting { delay, attempt, .. } = reconnecting else {
            unreachable!("checked above");
        };
        assert_eq!(attempt, expected_attempt);
        let ceiling = MAX.min(BASE * 2_u32.pow(expected_attempt - 1));
        assert!(
            delay <= ceiling,
            "attempt {attempt}: {delay:?} > {ceiling:?}"
        );
    }

    let mut accepted = broker.accept().await;
    accepted.accept_connect(false).await;
    expect_connected(&mut events, false).await;
    let sent = expect_publish(accepted.recv().await);
    accepted
        .send(&Packet::PubAck(PubAck {
            packet_id: packet_id(&sent),
            reason: PubAckReason::Success,
            properties: Properties::default().into(),
        }))
        .await;
    assert!(outcome(pending).await.is_ok());

    disconnect(&client).await;
    expect_only_disconnect(&mut accepted).await;
    drop(client);
    assert_actors_back_to(baseline).await;
}

#[actix_rt::test]
async fn disconnect_during_backoff_ends_client() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = ScriptedBroker::bind().await;
    let long_wait = Duration::from_secs(600);
    let (client, mut events) =
        start(options(broker.port()).reconnect_backoff(long_wait, long_wait));

    let mut first = broker.accept().await;
    first.accept_connect(false).await;
    expect_connected(&mut events, false).await;
    let in_flight = spawn_publish(&client, "t/abandoned", QoS::AtLeastOnce);
    expect_publish(first.recv().await);
    first.cut();
    expect_reconnecting(&mut events).await;

    disconnect(&client).await;
    assert!(matches!(
        outcome(in_flight).await,
        Err(ClientError::Stopped)
    ));
    match next(&mut events).await {
        Event::Disconnected {
            reason: DisconnectCause::Requested,
        } => {}
        other => panic!("expected Disconnected, got {other:?}"),
    }
    assert_actors_back_to(baseline).await;
    assert!(matches!(client.stats().await, Err(ClientError::Stopped)));
}

#[actix_rt::test]
async fn dropping_handle_during_backoff_ends_client() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = ScriptedBroker::bind().await;
    let long_wait = Duration::from_secs(600);
    let (client, mut events) =
        start(options(broker.port()).reconnect_backoff(long_wait, long_wait));

    let mut first = broker.accept().await;
    first.accept_connect(false).await;
    expect_connected(&mut events, false).await;
    first.cut();
    expect_reconnecting(&mut events).await;

    drop(client);
    match next(&mut events).await {
        Event::Disconnected {
            reason: DisconnectCause::Requested,
        } => {}
        other => panic!("expected Disconnected, got {other:?}"),
    }
    assert_actors_back_to(baseline).await;
}

#[actix_rt::test]
async fn disconnect_while_reconnecting_stops_retries() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = ScriptedBroker::bind().await;
    let (client, mut events) = start(options(broker.port()));

    let mut first = broker.accept().await;
    first.accept_connect(false).await;
    expect_connected(&mut events, false).await;
    first.cut();
    expect_reconnecting(&mut events).await;

    // The next attempt sent CONNECT and waits for CONNACK when the application leaves.
    let mut second = broker.accept().await;
    second.expect_connect().await;
    disconnect(&client).await;
    let rest = second.until_closed().await;
    assert!(rest.is_empty(), "nothing after CONNECT: {rest:?}");
    match next(&mut events).await {
        Event::Disconnected {
            reason: DisconnectCause::Requested,
        } => {}
        other => panic!("expected Disconnected, got {other:?}"),
    }
    assert_actors_back_to(baseline).await;
}

#[actix_rt::test]
async fn failed_server_fails_over_to_fallback() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    // A port that was just free and is closed again: connecting to it fails at once.
    let closed_port = ScriptedBroker::bind().await.port();
    let fallback = ScriptedBroker::bind().await;
    let options = options(closed_port).fallback_server("127.0.0.1", fallback.port());
    let (client, mut events) = start(options);

    let (cause, reconnecting) = expect_reconnecting(&mut events).await;
    assert!(
        matches!(
            cause,
            DisconnectCause::Failed(ClientError::ConnectFailed(_))
        ),
        "cause {cause:?}"
    );
    match reconnecting {
        Event::Reconnecting { port, .. } => assert_eq!(port, fallback.port()),
        other => panic!("expected Reconnecting, got {other:?}"),
    }

    let mut connection = fallback.accept().await;
    connection.accept_connect(false).await;
    expect_connected(&mut events, false).await;

    disconnect(&client).await;
    expect_only_disconnect(&mut connection).await;
    drop(client);
    assert_actors_back_to(baseline).await;
}

#[actix_rt::test]
async fn reconnect_off_keeps_stopping_on_loss() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = ScriptedBroker::bind().await;
    let options = ClientOptions::new("127.0.0.1", broker.port()).client_id("no-reconnect");
    let (client, mut events) = start(options);

    let mut first = broker.accept().await;
    first.accept_connect(false).await;
    expect_connected(&mut events, false).await;
    let in_flight = spawn_publish(&client, "t/lost", QoS::AtLeastOnce);
    expect_publish(first.recv().await);
    first.cut();

    assert!(matches!(
        outcome(in_flight).await,
        Err(ClientError::ConnectionClosed(ClosedBy::EndOfStream))
    ));
    match next(&mut events).await {
        Event::Disconnected {
            reason: DisconnectCause::Failed(_),
        } => {}
        other => panic!("expected Disconnected, got {other:?}"),
    }
    assert_actors_back_to(baseline).await;
    assert!(
        events.try_recv().is_err(),
        "no Reconnecting without reconnect"
    );
}

/// Number of QoS 1 messages streamed through a Mosquitto restart.
const STREAMED: usize = 300;

/// Number of messages the subscriber receives before the broker restarts.
const BEFORE_RESTART: usize = 100;

/// Options of a client whose session survives a broker restart. The client uses MQTT
/// 3.1.1 with clean session 0, because Mosquitto 2.0.11 sent Session Present 0 after a
/// restart to a v5 client with a Session Expiry Interval of one hour, so it had lost
/// the session and the messages queued in it.
fn persistent(port: u16, client_id: &str) -> ClientOptions {
    ClientOptions::new("127.0.0.1", port)
        .client_id(client_id)
        .protocol(ProtocolVersion::V3_1_1)
        .clean_start(false)
        .reconnect(true)
        .reconnect_backoff(Duration::from_millis(5), Duration::from_millis(100))
}

#[actix_rt::test]
async fn mosquitto_restart_loses_no_qos1_message() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let Some(mut broker) = RestartableMosquitto::start("reconnect-restart").await else {
        return;
    };
    let port = broker.port();

    let subscriber = persistent(port, "restart-subscriber").start().unwrap();
    let (messages, mut message_rx) = forward::<mqttlink::Message>();
    let filter = "restart/#".parse().unwrap();
    let subscribe = Subscribe::new(messages.recipient())
        .filter(filter, SubscriptionOptions::with_qos(QoS::AtLeastOnce));
    tokio::time::timeout(STEP, subscriber.subscribe(subscribe))
        .await
        .expect("subscribe resolves in time")
        .unwrap();

    // One publish at a time, so the restart lands in the middle of the stream.
    let publisher = persistent(port, "restart-publisher").start().unwrap();
    let sender = publisher.clone();
    let stream = actix_rt::spawn(async move {
        for index in 0..STREAMED {
            let publish =
                Publish::new(topic("restart/stream"), index.to_string()).qos(QoS::AtLeastOnce);
            sender.publish(publish).await?;
        }
        Ok::<(), ClientError>(())
    });

    let mut received = std::collections::BTreeSet::new();
    let mut deliveries = 0_usize;
    let mut restarted = false;
    let collect = async {
        while received.len() < STREAMED {
            let message = message_rx.recv().await.expect("recipient alive");
            deliveries += 1;
            let index: usize = std::str::from_utf8(&message.payload)
                .unwrap()
                .parse()
                .unwrap();
            received.insert(index);
            if !restarted && received.len() >= BEFORE_RESTART {
                restarted = true;
                broker.restart().await;
            }
        }
    };
    let collected = tokio::time::timeout(Duration::from_secs(60), collect).await;
    let missing: Vec<usize> = (0..STREAMED)
        .filter(|index| !received.contains(index))
        .collect();
    assert!(
        collected.is_ok(),
        "{} of {STREAMED} messages arrived, missing {missing:?}:\n{}",
        received.len(),
        broker.log_tail()
    );
    assert!(restarted, "the broker restarted during the stream");
    assert!(deliveries >= STREAMED);

    tokio::time::timeout(STEP, stream)
        .await
        .expect("publisher finishes in time")
        .unwrap()
        .expect("every publish acknowledged");
    disconnect(&publisher).await;
    disconnect(&subscriber).await;
    drop(publisher);
    drop(subscriber);
    assert_actors_back_to(baseline).await;
}

#[actix_rt::test]
async fn backoff_delays_elapse_on_paused_clock() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    // Every attempt fails at once, because nothing listens on this port.
    let closed_port = ScriptedBroker::bind().await.port();
    tokio::time::pause();
    let base = Duration::from_millis(100);
    let max = Duration::from_millis(800);
    let options = options(closed_port)
        .reconnect_backoff(base, max)
        .connect_timeout(Duration::from_secs(1));
    let (client, mut events) = start(options);

    let mut last_wait: Option<(tokio::time::Instant, Duration)> = None;
    for expected_attempt in 1..=6_u32 {
        let (cause, reconnecting) = expect_reconnecting(&mut events).await;
        let now = tokio::time::Instant::now();
        assert!(
            matches!(
                cause,
                DisconnectCause::Failed(
                    ClientError::ConnectFailed(_) | ClientError::ConnectTimeout
                )
            ),
            "cause {cause:?}"
        );
        if let Some((scheduled, delay)) = last_wait {
            let waited = now - scheduled;
            assert!(
                waited >= delay,
                "attempt started after {waited:?}, before {delay:?}"
            );
        }
        let Event::Reconnecting { delay, attempt, .. } = reconnecting else {
            unreachable!("checked by expect_reconnecting");
        };
        assert_eq!(attempt, expected_attempt);
        let ceiling = max.min(base * 2_u32.pow(expected_attempt - 1));
        assert!(
            delay <= ceiling,
            "attempt {attempt}: {delay:?} > {ceiling:?}"
        );
        last_wait = Some((now, delay));
    }

    disconnect(&client).await;
    drop(client);
    assert_actors_back_to(baseline).await;
}
