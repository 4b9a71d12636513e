//! Automatic reconnect against a scripted fake broker on the loopback interface.
//!
//! The tests cover resending unacknowledged flows after a cut, subscribing again when the
//! session is gone, stopping on fatal CONNACK codes and retrying on transient ones,
//! failover, and ending cleanly while a reconnect is pending. Others run on a paused
//! tokio clock: keep-alive against a stalled broker, delayed PINGRESP and CONNACK, and
//! the spacing and jitter of the backoff. Backoff delays are a few milliseconds, and no
//! test reads the wall clock.

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

use actor_broker::{assert_actors_back_to, forward, next, Gate, STEP};
use mqttlink::codec::{
    ConnectReason, Delivery, DisconnectReason, Packet, PacketId, Properties, ProtocolVersion,
    PubAck, PubAckReason, PubComp, PubCompReason, PubRec, QoS, SubAck, SubAckReason,
    SubscriptionOptions,
};
use mqttlink::{
    live_actor_count, Client, ClientError, ClientOptions, ClosedBy, Disconnect, DisconnectCause,
    Event, Publish, PublishOutcome, Subscribe,
};
use reconnect_broker::{
    persistent, wait_for_queued, Connection, RestartableMosquitto, ScriptedBroker,
};
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
        send_puback(&mut second, id).await;
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
    send_puback(&mut accepted, packet_id(&sent)).await;
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
            DisconnectCause::Failed(ClientError::ConnectFailed { .. })
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
                    ClientError::ConnectFailed { .. } | ClientError::ConnectTimeout
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

/// Returns a CONNACK that refuses the connection with `reason` and names `reference`
/// as the server to use instead.
fn redirecting_connack(reason: ConnectReason, reference: &str) -> Packet {
    Packet::ConnAck(mqttlink::codec::ConnAck {
        session_present: false,
        reason,
        properties: Properties {
            server_reference: Some(reference.into()),
            ..Properties::default()
        }
        .into(),
    })
}

async fn expect_puback_completes(
    connection: &mut Connection,
    task: tokio::task::JoinHandle<Result<PublishOutcome, ClientError>>,
    sent: &mqttlink::codec::Publish,
) {
    send_puback(connection, packet_id(sent)).await;
    let completed = outcome(task).await.unwrap();
    assert_eq!(completed.reason, Some(PubAckReason::Success));
}

#[actix_rt::test]
async fn connack_use_another_server_follows_reference() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let first = ScriptedBroker::bind().await;
    let second = ScriptedBroker::bind().await;
    let reference = format!("127.0.0.1:{}", second.port());
    let (client, mut events) = start(options(first.port()));
    let pending = spawn_publish(&client, "t/redirected", QoS::AtLeastOnce);

    let mut refused = first.accept().await;
    refused.expect_connect().await;
    let connack = redirecting_connack(ConnectReason::UseAnotherServer, &reference);
    refused.send(&connack).await;
    let rest = refused.until_closed().await;
    assert!(rest.is_empty(), "packets after the refusal: {rest:?}");

    let (cause, reconnecting) = expect_reconnecting(&mut events).await;
    assert_eq!(cause.server_reference(), Some(reference.as_str()));
    assert!(
        matches!(
            cause,
            DisconnectCause::Failed(ClientError::ConnectRefused {
                reason: ConnectReason::UseAnotherServer,
                ..
            })
        ),
        "cause {cause:?}"
    );
    match reconnecting {
        Event::Reconnecting { host, port, .. } => {
            assert_eq!(host, "127.0.0.1");
            assert_eq!(
                port,
                second.port(),
                "the attempt goes to the referenced server"
            );
        }
        other => panic!("expected Reconnecting, got {other:?}"),
    }

    // The publish queued before the refusal waits and leaves on the new server.
    let mut moved = second.accept().await;
    moved.accept_connect(false).await;
    expect_connected(&mut events, false).await;
    let sent = expect_publish(moved.recv().await);
    assert_eq!(sent.topic, Some(topic("t/redirected")));
    expect_puback_completes(&mut moved, pending, &sent).await;

    disconnect(&client).await;
    expect_only_disconnect(&mut moved).await;
    drop(client);
    assert_actors_back_to(baseline).await;
}

#[actix_rt::test]
async fn disconnect_server_moved_follows_reference() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let first = ScriptedBroker::bind().await;
    let second = ScriptedBroker::bind().await;
    let reference = format!("127.0.0.1:{}", second.port());
    let (client, mut events) = start(options(first.port()));

    let mut old = first.accept().await;
    old.accept_connect(false).await;
    expect_connected(&mut events, false).await;
    let in_flight = spawn_publish(&client, "t/moved", QoS::AtLeastOnce);
    let sent = expect_publish(old.recv().await);
    old.send(&Packet::Disconnect(mqttlink::codec::Disconnect {
        reason: mqttlink::codec::DisconnectReason::ServerMoved,
        properties: Properties {
            server_reference: Some(reference.as_str().into()),
            ..Properties::default()
        }
        .into(),
    }))
    .await;
    let rest = old.until_closed().await;
    assert!(rest.is_empty(), "packets after DISCONNECT: {rest:?}");

    let (cause, reconnecting) = expect_reconnecting(&mut events).await;
    assert_eq!(cause.server_reference(), Some(reference.as_str()));
    match reconnecting {
        Event::Reconnecting { port, .. } => assert_eq!(port, second.port()),
        other => panic!("expected Reconnecting, got {other:?}"),
    }

    // The new server resumes the session, so the unacknowledged publish is resent there.
    let mut moved = second.accept().await;
    let connect = moved.accept_connect(true).await;
    assert!(
        !connect.clean_start,
        "the session is resumed on the new server"
    );
    expect_connected(&mut events, true).await;
    let resent = expect_publish(moved.recv().await);
    assert!(resent.dup);
    assert_eq!(packet_id(&resent), packet_id(&sent));
    expect_puback_completes(&mut moved, in_flight, &resent).await;

    disconnect(&client).await;
    expect_only_disconnect(&mut moved).await;
    drop(client);
    assert_actors_back_to(baseline).await;
}

#[actix_rt::test]
async fn session_taken_over_stops_for_good() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = ScriptedBroker::bind().await;
    // One publish in flight at a time, so the second waits in the queue.
    let (client, mut events) = start(options(broker.port()).max_inflight(1));

    let mut connection = broker.accept().await;
    connection.accept_connect(false).await;
    expect_connected(&mut events, false).await;
    let in_flight = spawn_publish(&client, "t/taken", QoS::AtLeastOnce);
    expect_publish(connection.recv().await);
    let queued = spawn_publish(&client, "t/queued", QoS::AtLeastOnce);
    assert_eq!(wait_for_queued(&client, 1).await, 1);
    connection
        .send(&Packet::Disconnect(mqttlink::codec::Disconnect {
            reason: mqttlink::codec::DisconnectReason::SessionTakenOver,
            properties: Properties::default().into(),
        }))
        .await;

    let taken_over = |result: &Result<PublishOutcome, ClientError>| {
        matches!(
            result,
            Err(ClientError::ConnectionClosed(ClosedBy::Broker {
                reason: mqttlink::codec::DisconnectReason::SessionTakenOver,
                ..
            }))
        )
    };
    let in_flight = outcome(in_flight).await;
    assert!(taken_over(&in_flight), "{in_flight:?}");
    let queued = outcome(queued).await;
    assert!(taken_over(&queued), "{queued:?}");
    match next(&mut events).await {
        Event::Disconnected {
            reason: DisconnectCause::Failed(error),
        } => assert!(taken_over(&Err(error.clone())), "{error:?}"),
        other => panic!("expected Disconnected, got {other:?}"),
    }
    assert_actors_back_to(baseline).await;
    assert!(matches!(client.stats().await, Err(ClientError::Stopped)));
    assert!(
        events.try_recv().is_err(),
        "no Reconnecting after the session was taken over"
    );
}

/// Returns the time from `start` to now on tokio's clock, which the keep-alive tests pause.
fn elapsed_since(start: tokio::time::Instant) -> Duration {
    tokio::time::Instant::now() - start
}

/// Checks that `elapsed` is `expected` on a paused clock, give or take the few
/// milliseconds that loopback I/O may let the clock advance.
fn assert_about(elapsed: Duration, expected: Duration, what: &str) {
    assert!(
        elapsed >= expected && elapsed < expected + Duration::from_millis(50),
        "{what} after {elapsed:?}, expected {expected:?}"
    );
}

/// Resumes tokio's clock, then waits for the live actor count to return to `baseline`.
/// The wait yields in a loop, and on a paused clock that loop would keep its own
/// timeout from ever expiring.
async fn resume_clock_and_check_actors(baseline: usize) {
    tokio::time::resume();
    assert_actors_back_to(baseline).await;
}

/// Expects the Disconnected and Reconnecting events of a keep-alive timeout.
async fn expect_keep_alive_timeout(events: &mut UnboundedReceiver<Event>) {
    let (cause, _) = expect_reconnecting(events).await;
    assert!(
        matches!(
            cause,
            DisconnectCause::Failed(ClientError::KeepAliveTimeout)
        ),
        "cause {cause:?}"
    );
}

fn qos0_publish(name: &str, payload: &'static str) -> Packet {
    Packet::Publish(mqttlink::codec::Publish {
        dup: false,
        delivery: Delivery::AtMostOnce,
        retain: false,
        topic: Some(topic(name)),
        properties: Properties::default().into(),
        payload: payload.into(),
    })
}

#[actix_rt::test]
async fn stalled_broker_misses_pingresp_deadline() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = ScriptedBroker::bind().await;
    tokio::time::pause();
    let keep_alive = Duration::from_secs(1);
    let (client, mut events) = start(options(broker.port()).keep_alive(keep_alive));

    let mut stalled = broker.accept().await;
    let connect = stalled.accept_connect(false).await;
    assert_eq!(connect.keep_alive, 1);
    let connected_at = tokio::time::Instant::now();
    expect_connected(&mut events, false).await;

    // The broker reads nothing and sends nothing from here on, with the socket open.
    // The client sends PINGREQ after one interval and gives up one interval later.
    expect_keep_alive_timeout(&mut events).await;
    assert_about(
        elapsed_since(connected_at),
        2 * keep_alive,
        "keep-alive timeout",
    );
    let sent = stalled.until_closed().await;
    assert_eq!(sent, [Packet::PingReq], "the client sent only PINGREQ");

    // The next connection starts with fresh keep-alive state: PINGREQ one interval after
    // CONNECT, and each PINGRESP keeps the connection up.
    let mut second = broker.accept().await;
    second.accept_connect(true).await;
    let mut last = tokio::time::Instant::now();
    expect_connected(&mut events, true).await;
    for round in 0..3 {
        assert_eq!(second.recv().await, Packet::PingReq, "round {round}");
        assert_about(elapsed_since(last), keep_alive, "PINGREQ");
        last = tokio::time::Instant::now();
        second.send(&Packet::PingResp).await;
    }
    assert!(events.try_recv().is_err(), "the connection stayed up");

    disconnect(&client).await;
    expect_only_disconnect(&mut second).await;
    drop(client);
    resume_clock_and_check_actors(baseline).await;
}

/// Connects a client with a one second keep-alive to a broker that sends a message with
/// `qos` every 250 ms but never reads, and checks that the client still gives up at the
/// PINGRESP deadline. Returns what the client sent on the connection.
async fn check_dead_link_under_traffic(broker: &ScriptedBroker, qos: QoS) -> Vec<Packet> {
    let what = format!("QoS {} traffic", qos.level());
    let keep_alive = Duration::from_secs(1);
    let (client, mut events) = start(options(broker.port()).keep_alive(keep_alive));
    let (messages, mut message_rx) = forward::<mqttlink::Message>();
    client.set_default_recipient(messages.recipient());

    let mut connection = broker.accept().await;
    connection.accept_connect(false).await;
    let connected_at = tokio::time::Instant::now();
    expect_connected(&mut events, false).await;

    let mut sent: u16 = 0;
    let cause = loop {
        assert!(
            sent < 40,
            "{what}: no keep-alive timeout after {sent} messages"
        );
        tokio::select! {
            event = next(&mut events) => break event,
            () = tokio::time::sleep(Duration::from_millis(250)) => {
                let delivery = match qos {
                    QoS::AtMostOnce => Delivery::AtMostOnce,
                    _ => Delivery::AtLeastOnce(PacketId::try_from(sent + 1).unwrap()),
                };
                let Packet::Publish(mut publish) = qos0_publish("traffic/in", "tick") else {
                    unreachable!("qos0_publish builds a PUBLISH");
                };
                publish.delivery = delivery;
                if connection.try_send(&Packet::Publish(publish)).await {
                    sent += 1;
                }
            }
        }
    };
    assert!(
        matches!(
            cause,
            Event::Disconnected {
                reason: DisconnectCause::Failed(ClientError::KeepAliveTimeout)
            }
        ),
        "{what}: cause {cause:?}"
    );
    assert_about(elapsed_since(connected_at), 2 * keep_alive, &what);
    let mut delivered = 0;
    while message_rx.try_recv().is_ok() {
        delivered += 1;
    }
    assert!(
        delivered >= 4,
        "{what}: {delivered} of {sent} messages delivered"
    );

    disconnect(&client).await;
    drop(client);
    connection.until_closed().await
}

#[actix_rt::test]
async fn broker_traffic_does_not_hide_dead_link() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = ScriptedBroker::bind().await;
    tokio::time::pause();

    // Incoming messages must not count as a PINGRESP.
    let sent = check_dead_link_under_traffic(&broker, QoS::AtMostOnce).await;
    assert_eq!(sent, [Packet::PingReq], "the client sent only PINGREQ");

    // The PUBACKs the client sends for QoS 1 messages do not postpone PINGREQ either,
    // because they do not show that the broker reads.
    let sent = check_dead_link_under_traffic(&broker, QoS::AtLeastOnce).await;
    let pings = sent
        .iter()
        .filter(|packet| matches!(packet, Packet::PingReq))
        .count();
    assert_eq!(pings, 1, "one PINGREQ among {sent:?}");
    assert!(
        sent.iter()
            .all(|packet| matches!(packet, Packet::PingReq | Packet::PubAck(_))),
        "only PUBACK and PINGREQ: {sent:?}"
    );

    resume_clock_and_check_actors(baseline).await;
}

#[actix_rt::test]
async fn server_keep_alive_replaces_client_interval() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = ScriptedBroker::bind().await;
    tokio::time::pause();
    // (client keep-alive, Server Keep Alive in CONNACK), both in seconds.
    for (client_seconds, server_seconds) in [(60_u16, 1_u16), (1, 3)] {
        let options = options(broker.port()).keep_alive(Duration::from_secs(client_seconds.into()));
        let (client, mut events) = start(options);
        let mut connection = broker.accept().await;
        let properties = Properties {
            server_keep_alive: Some(server_seconds),
            ..Properties::default()
        };
        let connect = connection.accept_connect_with(false, properties).await;
        assert_eq!(connect.keep_alive, client_seconds);
        let connected_at = tokio::time::Instant::now();
        expect_connected(&mut events, false).await;

        let interval = Duration::from_secs(server_seconds.into());
        assert_eq!(connection.recv().await, Packet::PingReq);
        assert_about(elapsed_since(connected_at), interval, "PINGREQ");

        // Unanswered, the PINGREQ times out one Server Keep Alive later.
        expect_keep_alive_timeout(&mut events).await;
        assert_about(
            elapsed_since(connected_at),
            2 * interval,
            "keep-alive timeout",
        );

        disconnect(&client).await;
        drop(client);
        resume_clock_and_check_actors(baseline).await;
        tokio::time::pause();
    }
}

#[actix_rt::test]
async fn late_pingresp_counts_only_before_deadline() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = ScriptedBroker::bind().await;
    tokio::time::pause();
    let keep_alive = Duration::from_secs(1);
    let (client, mut events) = start(options(broker.port()).keep_alive(keep_alive));
    let mut connection = broker.accept().await;
    connection.accept_connect(false).await;
    expect_connected(&mut events, false).await;

    // PINGRESP delayed by 900 ms arrives before the deadline: the connection stays.
    assert_eq!(connection.recv().await, Packet::PingReq);
    tokio::time::sleep(Duration::from_millis(900)).await;
    connection.send(&Packet::PingResp).await;
    assert!(events.try_recv().is_err(), "the connection stayed up");

    // PINGRESP delayed by 1,100 ms misses the deadline one interval after PINGREQ.
    assert_eq!(connection.recv().await, Packet::PingReq);
    let pinged_at = tokio::time::Instant::now();
    let late = async {
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        connection.try_send(&Packet::PingResp).await
    };
    let timed_out = async {
        expect_keep_alive_timeout(&mut events).await;
        tokio::time::Instant::now()
    };
    let (_, timed_out_at) = tokio::join!(late, timed_out);
    assert_about(timed_out_at - pinged_at, keep_alive, "keep-alive timeout");

    disconnect(&client).await;
    drop(client);
    resume_clock_and_check_actors(baseline).await;
}

/// What automatic reconnect does after a CONNACK refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterRefusal {
    /// The client stops and fails the waiting callers.
    Stop,
    /// The client connects again after a backoff delay, to the next server.
    Retry,
}

/// Every v5 CONNACK failure code with the response the reconnect policy documents.
/// Use Another Server and Server Moved redirect, which without a Server Reference is a
/// retry on the next server.
const V5_REFUSALS: [(ConnectReason, AfterRefusal); 21] = [
    (ConnectReason::UnspecifiedError, AfterRefusal::Retry),
    (ConnectReason::MalformedPacket, AfterRefusal::Stop),
    (ConnectReason::ProtocolError, AfterRefusal::Stop),
    (
        ConnectReason::ImplementationSpecificError,
        AfterRefusal::Retry,
    ),
    (
        ConnectReason::UnsupportedProtocolVersion,
        AfterRefusal::Stop,
    ),
    (ConnectReason::ClientIdentifierNotValid, AfterRefusal::Stop),
    (ConnectReason::BadUserNameOrPassword, AfterRefusal::Stop),
    (ConnectReason::NotAuthorized, AfterRefusal::Stop),
    (ConnectReason::ServerUnavailable, AfterRefusal::Retry),
    (ConnectReason::ServerBusy, AfterRefusal::Retry),
    (ConnectReason::Banned, AfterRefusal::Stop),
    (ConnectReason::BadAuthenticationMethod, AfterRefusal::Stop),
    (ConnectReason::TopicNameInvalid, AfterRefusal::Stop),
    (ConnectReason::PacketTooLarge, AfterRefusal::Stop),
    (ConnectReason::QuotaExceeded, AfterRefusal::Retry),
    (ConnectReason::PayloadFormatInvalid, AfterRefusal::Stop),
    (ConnectReason::RetainNotSupported, AfterRefusal::Stop),
    (ConnectReason::QoSNotSupported, AfterRefusal::Stop),
    (ConnectReason::UseAnotherServer, AfterRefusal::Retry),
    (ConnectReason::ServerMoved, AfterRefusal::Retry),
    (ConnectReason::ConnectionRateExceeded, AfterRefusal::Retry),
];

/// The MQTT 3.1.1 CONNACK return codes 1 to 5 (section 3.2.2.3), the reason each maps
/// to, and the response.
const V3_REFUSALS: [(u8, ConnectReason, AfterRefusal); 5] = [
    (
        1,
        ConnectReason::UnsupportedProtocolVersion,
        AfterRefusal::Stop,
    ),
    (
        2,
        ConnectReason::ClientIdentifierNotValid,
        AfterRefusal::Stop,
    ),
    (3, ConnectReason::ServerUnavailable, AfterRefusal::Retry),
    (4, ConnectReason::BadUserNameOrPassword, AfterRefusal::Stop),
    (5, ConnectReason::NotAuthorized, AfterRefusal::Stop),
];

/// Connects a client whose broker refuses with `refusal`, the bytes of a CONNACK, and
/// checks the reported reason and what the client does next.
async fn check_refusal(
    version: ProtocolVersion,
    refusal: &[u8],
    reason: ConnectReason,
    after: AfterRefusal,
) {
    let what = format!("{version:?} {reason:?}");
    let baseline = live_actor_count();
    let broker = ScriptedBroker::bind().await;
    let fallback = ScriptedBroker::bind().await;
    let long_wait = Duration::from_secs(600);
    let options = options(broker.port())
        .protocol(version)
        .reconnect_backoff(long_wait, long_wait)
        .fallback_server("127.0.0.1", fallback.port());
    let (client, mut events) = start(options);
    let pending = spawn_publish(&client, "t/refused", QoS::AtLeastOnce);

    let mut connection = broker.accept().await;
    connection.expect_connect().await;
    connection.send_raw(refusal).await;
    let rest = connection.until_closed().await;
    assert!(
        rest.is_empty(),
        "{what}: packets after the refusal: {rest:?}"
    );
    match next(&mut events).await {
        Event::Disconnected {
            reason: DisconnectCause::Failed(ClientError::ConnectRefused { reason: got, .. }),
        } => assert_eq!(got, reason, "{what}: reported reason"),
        other => panic!("{what}: expected Disconnected, got {other:?}"),
    }

    match after {
        AfterRefusal::Stop => {
            match outcome(pending).await {
                Err(ClientError::ConnectRefused { reason: got, .. }) => {
                    assert_eq!(got, reason, "{what}: publish error");
                }
                other => panic!("{what}: expected ConnectRefused, got {other:?}"),
            }
            assert_actors_back_to(baseline).await;
            assert!(
                matches!(client.stats().await, Err(ClientError::Stopped)),
                "{what}: client stopped"
            );
            assert!(events.try_recv().is_err(), "{what}: no Reconnecting");
        }
        AfterRefusal::Retry => {
            match next(&mut events).await {
                Event::Reconnecting {
                    delay,
                    port,
                    attempt,
                    ..
                } => {
                    assert_eq!(attempt, 1, "{what}: attempt");
                    assert_eq!(port, fallback.port(), "{what}: next server");
                    assert!(delay <= long_wait, "{what}: delay {delay:?}");
                }
                other => panic!("{what}: expected Reconnecting, got {other:?}"),
            }
            disconnect(&client).await;
            assert!(
                matches!(outcome(pending).await, Err(ClientError::Stopped)),
                "{what}: publish ends with Stopped"
            );
            drop(client);
            assert_actors_back_to(baseline).await;
        }
    }
}

#[actix_rt::test]
async fn each_connack_refusal_follows_policy() {
    let _serial = SERIAL.lock().await;
    for (reason, after) in V5_REFUSALS {
        let mut connack = bytes::BytesMut::new();
        let packet = Packet::ConnAck(mqttlink::codec::ConnAck {
            session_present: false,
            reason,
            properties: Properties::default().into(),
        });
        mqttlink::codec::encode(&packet, ProtocolVersion::V5, u32::MAX, &mut connack).unwrap();
        check_refusal(ProtocolVersion::V5, &connack, reason, after).await;
    }
    for (code, reason, after) in V3_REFUSALS {
        // CONNACK: type 2, remaining length 2, no session present, the return code.
        let connack = [0x20, 0x02, 0x00, code];
        check_refusal(ProtocolVersion::V3_1_1, &connack, reason, after).await;
    }
}

/// Refuses the next `attempts` connection attempts with Server Busy and returns, for
/// each, the delay of its Reconnecting event. Checks on the paused clock that each next
/// attempt starts once its delay has passed, and not later.
async fn refuse_attempts(
    broker: &ScriptedBroker,
    events: &mut UnboundedReceiver<Event>,
    attempts: u32,
) -> Vec<Duration> {
    let mut delays = Vec::new();
    let mut scheduled: Option<(tokio::time::Instant, Duration)> = None;
    for expected_attempt in 1..=attempts {
        let mut connection = broker.accept().await;
        if let Some((at, delay)) = scheduled {
            assert_about(elapsed_since(at), delay, "next attempt");
        }
        connection.reject_connect(ConnectReason::ServerBusy).await;
        let (_, reconnecting) = expect_reconnecting(events).await;
        let Event::Reconnecting { delay, attempt, .. } = reconnecting else {
            unreachable!("checked by expect_reconnecting");
        };
        assert_eq!(attempt, expected_attempt);
        scheduled = Some((tokio::time::Instant::now(), delay));
        delays.push(delay);
    }
    delays
}

#[actix_rt::test]
async fn backoff_ceilings_double_with_full_jitter() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = ScriptedBroker::bind().await;
    tokio::time::pause();
    let base = Duration::from_millis(100);
    let max = Duration::from_millis(1_600);
    let ceiling = |attempt: u32| max.min(base * 2_u32.pow(attempt - 1));

    // The ceilings: 16 clients, 6 attempts each. Every delay of attempt n is at most
    // its ceiling. Some exceed the ceiling of attempt n - 1 (half the ceiling once it
    // reached the maximum), so the ceiling really doubled. All 16 staying below would
    // happen with probability 2^-16 per attempt.
    let clients = 16;
    let first_attempts = 6_u32;
    let mut by_attempt = vec![Vec::new(); first_attempts as usize];
    for index in 0..clients {
        let options = options(broker.port())
            .client_id(&format!("jitter-{index}"))
            .reconnect_backoff(base, max);
        let (client, mut events) = start(options);
        let delays = refuse_attempts(&broker, &mut events, first_attempts).await;
        for (slot, delay) in by_attempt.iter_mut().zip(delays) {
            slot.push(delay);
        }
        disconnect(&client).await;
        drop(client);
    }
    for (index, delays) in by_attempt.iter().enumerate() {
        let attempt = u32::try_from(index).unwrap() + 1;
        let largest = delays.iter().max().copied().unwrap();
        assert!(
            largest <= ceiling(attempt),
            "attempt {attempt}: {largest:?} above {:?}",
            ceiling(attempt)
        );
        let floor = if attempt == 1 {
            base / 2
        } else {
            ceiling(attempt - 1).min(ceiling(attempt) / 2)
        };
        assert!(
            largest > floor,
            "attempt {attempt}: largest of {clients} delays {largest:?} not above {floor:?}"
        );
    }

    // The jitter: 120 attempts of one client, whose delays from attempt 5 on are drawn
    // from [0, max]. Each quarter of the range gets at least 5 % of them (25 % is
    // expected), and the extremes are reached within 10 %.
    let options = options(broker.port())
        .client_id("jitter-spread")
        .reconnect_backoff(base, max);
    let (client, mut events) = start(options);
    let delays = refuse_attempts(&broker, &mut events, 120).await;
    let capped: Vec<Duration> = delays[4..].to_vec();
    assert!(
        capped.iter().all(|delay| *delay <= max),
        "delay above {max:?}"
    );
    let mut quarters = [0_usize; 4];
    for delay in &capped {
        let quarter = (delay.as_nanos() * 4 / (max.as_nanos() + 1)) as usize;
        quarters[quarter] += 1;
    }
    for (quarter, count) in quarters.iter().enumerate() {
        assert!(
            count * 20 >= capped.len(),
            "quarter {quarter} of [0, {max:?}] has {count} of {} delays: {quarters:?}",
            capped.len()
        );
    }
    let smallest = capped.iter().min().copied().unwrap();
    let largest = capped.iter().max().copied().unwrap();
    assert!(smallest < max / 10, "smallest delay {smallest:?}");
    assert!(largest > max * 9 / 10, "largest delay {largest:?}");
    println!(
        "backoff jitter: {} delays in [0, {max:?}], quarters {quarters:?}, \
         smallest {smallest:?}, largest {largest:?}",
        capped.len()
    );

    disconnect(&client).await;
    drop(client);
    resume_clock_and_check_actors(baseline).await;
}

/// Subscribes in a task of its own, acknowledges the SUBSCRIBE with `reasons`, and returns
/// the SUBSCRIBE as the broker received it.
async fn subscribe_through(
    client: &Client,
    connection: &mut Connection,
    subscribe: Subscribe,
    reasons: Vec<SubAckReason>,
) -> mqttlink::codec::Subscribe {
    let subscriber = client.clone();
    let task = actix_rt::spawn(async move { subscriber.subscribe(subscribe).await });
    let sent = match connection.recv().await {
        Packet::Subscribe(sent) => sent,
        other => panic!("expected SUBSCRIBE, got {other:?}"),
    };
    connection
        .send(&Packet::SubAck(SubAck {
            packet_id: sent.packet_id,
            reasons,
            properties: Properties::default().into(),
        }))
        .await;
    tokio::time::timeout(STEP, task)
        .await
        .expect("subscribe resolves in time")
        .unwrap()
        .expect("subscribe succeeds");
    sent
}

/// Sends a QoS 0 message on `name` that carries `identifiers`, as a v5 broker does for
/// the subscriptions the message matched.
async fn publish_matching(
    connection: &mut Connection,
    name: &str,
    identifiers: &[std::num::NonZeroU32],
) {
    let Packet::Publish(mut publish) = qos0_publish(name, "routed") else {
        unreachable!("qos0_publish builds a PUBLISH");
    };
    publish.properties.subscription_identifiers = identifiers.to_vec();
    connection.send(&Packet::Publish(publish)).await;
}

/// Unsubscribes `filter` in a task of its own and acknowledges the UNSUBSCRIBE with success.
async fn unsubscribe_through(client: &Client, connection: &mut Connection, filter: &str) {
    let unsubscriber = client.clone();
    let unsubscribe = mqttlink::Unsubscribe::new().filter(filter.parse().unwrap());
    let task = actix_rt::spawn(async move { unsubscriber.unsubscribe(unsubscribe).await });
    let Packet::Unsubscribe(sent) = connection.recv().await else {
        panic!("expected UNSUBSCRIBE");
    };
    // MQTT 3.1.1 UNSUBACK has no reason codes.
    let reasons = if connection.is_v5() {
        vec![mqttlink::codec::UnsubAckReason::Success]
    } else {
        Vec::new()
    };
    connection
        .send(&Packet::UnsubAck(mqttlink::codec::UnsubAck {
            packet_id: sent.packet_id,
            reasons,
            properties: Properties::default().into(),
        }))
        .await;
    tokio::time::timeout(STEP, task)
        .await
        .expect("unsubscribe resolves in time")
        .unwrap()
        .expect("unsubscribe succeeds");
}

/// Reads SUBSCRIBE packets until they cover `count` filters, grants each, and returns
/// every filter with its options and the SUBSCRIBE that carried it.
async fn read_resubscribes(
    connection: &mut Connection,
    count: usize,
) -> Vec<(String, SubscriptionOptions, mqttlink::codec::Subscribe)> {
    let mut restored = Vec::new();
    while restored.len() < count {
        let Packet::Subscribe(subscribe) = connection.recv().await else {
            panic!("expected SUBSCRIBE again");
        };
        for (filter, options) in &subscribe.filters {
            restored.push((filter.as_str().to_owned(), *options, subscribe.clone()));
        }
        connection
            .send(&Packet::SubAck(SubAck {
                packet_id: subscribe.packet_id,
                reasons: vec![SubAckReason::GrantedQoS1; subscribe.filters.len()],
                properties: Properties::default().into(),
            }))
            .await;
    }
    restored
}

/// Returns QoS 1 options with every v5 option away from its default. MQTT 3.1.1
/// carries only the QoS of each filter.
fn detailed_options(version: ProtocolVersion) -> SubscriptionOptions {
    if version != ProtocolVersion::V5 {
        return SubscriptionOptions::with_qos(QoS::AtLeastOnce);
    }
    SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        no_local: true,
        retain_as_published: true,
        retain_handling: mqttlink::codec::RetainHandling::DoNotSend,
    }
}

/// Subscribes three filters with different options in two SUBSCRIBE packets, has one
/// filter rejected and one removed again, and loses the session on the broker. Then
/// checks that the reconnect subscribes exactly the remaining granted filters again,
/// each with its options and subscription identifier, and that messages still reach
/// their recipients.
async fn check_resubscribe(version: ProtocolVersion) {
    let what = format!("{version:?}");
    let v5 = version == ProtocolVersion::V5;
    let baseline = live_actor_count();
    let broker = ScriptedBroker::bind().await;
    let (client, mut events) = start(options(broker.port()).protocol(version));
    let (sensors, mut sensor_rx) = forward::<mqttlink::Message>();
    let (alarms, mut alarm_rx) = forward::<mqttlink::Message>();

    let mut first = broker.accept().await;
    first.accept_connect(false).await;
    expect_connected(&mut events, false).await;

    let detailed = detailed_options(version);
    let exactly_once = SubscriptionOptions::with_qos(QoS::ExactlyOnce);
    let at_most_once = SubscriptionOptions::with_qos(QoS::AtMostOnce);
    let sensor_subscribe = Subscribe::new(sensors.recipient())
        .filter("sensors/+".parse().unwrap(), detailed)
        .filter("rooms/#".parse().unwrap(), exactly_once)
        .filter("secret/x".parse().unwrap(), at_most_once);
    let sensor_reasons = vec![
        SubAckReason::GrantedQoS1,
        SubAckReason::GrantedQoS2,
        SubAckReason::UnspecifiedError,
    ];
    let sensor_sent =
        subscribe_through(&client, &mut first, sensor_subscribe, sensor_reasons).await;

    let mut alarm_subscribe = Subscribe::new(alarms.recipient())
        .filter("alarms".parse().unwrap(), at_most_once)
        .filter("alarms/old".parse().unwrap(), exactly_once);
    if v5 {
        alarm_subscribe = alarm_subscribe.properties(Properties {
            subscription_identifiers: vec![std::num::NonZeroU32::new(77).unwrap()],
            ..Properties::default()
        });
    }
    let alarm_reasons = vec![SubAckReason::GrantedQoS0, SubAckReason::GrantedQoS2];
    let alarm_sent = subscribe_through(&client, &mut first, alarm_subscribe, alarm_reasons).await;
    if v5 {
        assert_eq!(
            alarm_sent.properties.subscription_identifiers,
            [std::num::NonZeroU32::new(77).unwrap()],
            "{what}: the application's identifier is kept"
        );
        assert_eq!(sensor_sent.properties.subscription_identifiers.len(), 1);
    }

    unsubscribe_through(&client, &mut first, "alarms/old").await;

    // The broker restarts without the session.
    first.cut();
    expect_reconnecting(&mut events).await;
    let mut second = broker.accept().await;
    let connect = second.accept_connect(false).await;
    assert!(!connect.clean_start, "{what}: the reconnect asks to resume");
    expect_connected(&mut events, false).await;
    match next(&mut events).await {
        Event::Resubscribed { filters } => assert_eq!(filters, 3, "{what}"),
        other => panic!("{what}: expected Resubscribed, got {other:?}"),
    }

    // Granted filters, in order, with the SUBSCRIBE each was first sent in.
    let expected = [
        ("sensors/+", detailed, &sensor_sent),
        ("rooms/#", exactly_once, &sensor_sent),
        ("alarms", at_most_once, &alarm_sent),
    ];
    let restored = read_resubscribes(&mut second, expected.len()).await;
    assert_eq!(restored.len(), expected.len(), "{what}: {restored:?}");
    for ((filter, options, subscribe), (expected_filter, expected_options, original)) in
        restored.iter().zip(&expected)
    {
        assert_eq!(filter, expected_filter, "{what}: filter order");
        assert_eq!(options, expected_options, "{what}: options of {filter}");
        assert_eq!(
            subscribe.properties.subscription_identifiers,
            original.properties.subscription_identifiers,
            "{what}: subscription identifier of {filter}"
        );
    }

    // The routes survived: each recipient gets its own messages, and the removed
    // filter matches nothing.
    let sensor_ids = &sensor_sent.properties.subscription_identifiers;
    let alarm_ids = &alarm_sent.properties.subscription_identifiers;
    publish_matching(&mut second, "sensors/kitchen", sensor_ids).await;
    publish_matching(&mut second, "alarms/old", &[]).await;
    publish_matching(&mut second, "alarms", alarm_ids).await;
    assert_eq!(next(&mut sensor_rx).await.topic, topic("sensors/kitchen"));
    assert_eq!(next(&mut alarm_rx).await.topic, topic("alarms"));
    assert!(sensor_rx.try_recv().is_err(), "{what}: one message each");
    assert!(alarm_rx.try_recv().is_err(), "{what}: alarms/old is gone");
    let stats = client.stats().await.unwrap();
    assert_eq!(
        stats.unmatched_messages, 1,
        "{what}: alarms/old matched nothing"
    );

    disconnect(&client).await;
    expect_only_disconnect(&mut second).await;
    drop(client);
    assert_actors_back_to(baseline).await;
}

#[actix_rt::test]
async fn lost_session_restores_granted_filters() {
    let _serial = SERIAL.lock().await;
    check_resubscribe(ProtocolVersion::V3_1_1).await;
    check_resubscribe(ProtocolVersion::V5).await;
}

fn qos2_publish(packet_id: PacketId, dup: bool, payload: &'static str) -> Packet {
    Packet::Publish(mqttlink::codec::Publish {
        dup,
        delivery: Delivery::ExactlyOnce(packet_id),
        retain: false,
        topic: Some(topic("exactly/once")),
        properties: Properties::default().into(),
        payload: payload.into(),
    })
}

fn pubrel(packet_id: PacketId) -> Packet {
    Packet::PubRel(mqttlink::codec::PubRel {
        packet_id,
        reason: PubCompReason::Success,
        properties: Properties::default().into(),
    })
}

async fn expect_pubrec(connection: &mut Connection, packet_id: PacketId, what: &str) {
    match connection.recv().await {
        Packet::PubRec(rec) => assert_eq!(rec.packet_id, packet_id, "{what}"),
        other => panic!("{what}: expected PUBREC, got {other:?}"),
    }
}

async fn expect_pubcomp(
    connection: &mut Connection,
    packet_id: PacketId,
    reason: PubCompReason,
    what: &str,
) {
    match connection.recv().await {
        Packet::PubComp(comp) => {
            assert_eq!(comp.packet_id, packet_id, "{what}");
            assert_eq!(comp.reason, reason, "{what}");
        }
        other => panic!("{what}: expected PUBCOMP, got {other:?}"),
    }
}

/// Starts a client whose messages all go to the returned channel, with clean start 0
/// from the first connection so that a 3.1.1 session outlives it too, and connects it
/// to `broker` with a new session. Returns the client, its events, its messages and
/// the broker's side of the connection.
async fn connect_for_inbound(
    broker: &ScriptedBroker,
    version: ProtocolVersion,
) -> (
    Client,
    UnboundedReceiver<Event>,
    UnboundedReceiver<mqttlink::Message>,
    Connection,
) {
    let options = options(broker.port()).protocol(version).clean_start(false);
    let (client, mut events) = start(options);
    let (messages, message_rx) = forward::<mqttlink::Message>();
    client.set_default_recipient(messages.recipient());
    let mut connection = broker.accept().await;
    connection.accept_connect(false).await;
    expect_connected(&mut events, false).await;
    (client, events, message_rx, connection)
}

/// Checks that a QoS 2 message the broker sends again after a resumed session is
/// acknowledged again but delivered once, and that PUBREL for an identifier already
/// released still gets PUBCOMP. After a lost session the same identifier carries a new
/// message, which must be delivered.
async fn check_inbound_qos2_across_reconnect(version: ProtocolVersion) {
    let what = format!("{version:?}");
    let baseline = live_actor_count();
    let broker = ScriptedBroker::bind().await;
    let (client, mut events, mut message_rx, mut first) =
        connect_for_inbound(&broker, version).await;
    let id = PacketId::try_from(9).unwrap();
    first.send(&qos2_publish(id, false, "first")).await;
    expect_pubrec(&mut first, id, &what).await;
    assert_eq!(next(&mut message_rx).await.payload, "first");
    first.cut();
    expect_reconnecting(&mut events).await;

    // The resumed session: the broker did not see PUBREC, so it sends the PUBLISH again.
    let mut second = broker.accept().await;
    second.accept_connect(true).await;
    expect_connected(&mut events, true).await;
    second.send(&qos2_publish(id, true, "first")).await;
    expect_pubrec(&mut second, id, &what).await;
    second.send(&pubrel(id)).await;
    expect_pubcomp(&mut second, id, PubCompReason::Success, &what).await;
    // A PUBREL repeated because its PUBCOMP was lost still gets PUBCOMP.
    second.send(&pubrel(id)).await;
    let unknown = if version == ProtocolVersion::V5 {
        PubCompReason::PacketIdentifierNotFound
    } else {
        PubCompReason::Success
    };
    expect_pubcomp(&mut second, id, unknown, &what).await;
    // A QoS 0 marker sent after the flow arrives next, so no second copy was queued.
    second.send(&qos0_publish("exactly/once", "marker")).await;
    assert_eq!(next(&mut message_rx).await.payload, "marker", "{what}");

    // A PUBLISH awaiting PUBREL when the session is lost: the new session may use the
    // same identifier for a new message, which must be delivered.
    second.send(&qos2_publish(id, false, "second")).await;
    expect_pubrec(&mut second, id, &what).await;
    assert_eq!(next(&mut message_rx).await.payload, "second");
    second.cut();
    expect_reconnecting(&mut events).await;
    let mut third = broker.accept().await;
    third.accept_connect(false).await;
    expect_connected(&mut events, false).await;
    third.send(&qos2_publish(id, false, "third")).await;
    expect_pubrec(&mut third, id, &what).await;
    assert_eq!(next(&mut message_rx).await.payload, "third", "{what}");
    third.send(&pubrel(id)).await;
    expect_pubcomp(&mut third, id, PubCompReason::Success, &what).await;

    disconnect(&client).await;
    expect_only_disconnect(&mut third).await;
    drop(client);
    assert_actors_back_to(baseline).await;
    assert!(message_rx.try_recv().is_err(), "{what}: no further copies");
}

#[actix_rt::test]
async fn inbound_qos2_duplicate_across_reconnect() {
    let _serial = SERIAL.lock().await;
    check_inbound_qos2_across_reconnect(ProtocolVersion::V3_1_1).await;
    check_inbound_qos2_across_reconnect(ProtocolVersion::V5).await;
}

/// Checks that a QoS 2 message read in one piece with a v5 DISCONNECT (Server shutting
/// down) counts as delivered, although the connection closed before its PUBREC. The
/// copy the broker sends on the resumed session gets PUBREC and is not delivered
/// again, and its PUBREL gets PUBCOMP with reason Success.
#[actix_rt::test]
async fn qos2_before_server_disconnect_delivered_once() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = ScriptedBroker::bind().await;
    let (client, mut events, mut message_rx, mut first) =
        connect_for_inbound(&broker, ProtocolVersion::V5).await;
    let id = PacketId::try_from(9).unwrap();
    let mut last_write = first.encode(&qos2_publish(id, false, "first"));
    last_write.extend_from_slice(
        &first.encode(&Packet::Disconnect(mqttlink::codec::Disconnect {
            reason: DisconnectReason::ServerShuttingDown,
            properties: Properties::default().into(),
        })),
    );
    first.send_raw(&last_write).await;
    assert_eq!(next(&mut message_rx).await.payload, "first");
    expect_reconnecting(&mut events).await;
    drop(first);

    let mut second = broker.accept().await;
    second.accept_connect(true).await;
    expect_connected(&mut events, true).await;
    second.send(&qos2_publish(id, true, "first")).await;
    expect_pubrec(&mut second, id, "copy after the shutdown").await;
    second.send(&pubrel(id)).await;
    expect_pubcomp(&mut second, id, PubCompReason::Success, "release").await;
    // A QoS 0 marker sent after the flow arrives next, so no second copy was queued.
    second.send(&qos0_publish("exactly/once", "marker")).await;
    assert_eq!(next(&mut message_rx).await.payload, "marker");

    disconnect(&client).await;
    expect_only_disconnect(&mut second).await;
    drop(client);
    assert_actors_back_to(baseline).await;
    assert!(message_rx.try_recv().is_err(), "no further copies");
}

#[actix_rt::test]
async fn connack_delayed_past_timeout_retries() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = ScriptedBroker::bind().await;
    tokio::time::pause();
    let timeout = Duration::from_secs(2);
    let (client, mut events) = start(options(broker.port()).connect_timeout(timeout));
    let in_flight = spawn_publish(&client, "t/delayed", QoS::AtLeastOnce);

    // CONNACK delayed by 2.5 s misses the connect timeout; the late CONNACK finds the
    // connection closed.
    let mut late = broker.accept().await;
    late.expect_connect().await;
    let connecting_at = tokio::time::Instant::now();
    let timed_out = async {
        let (cause, _) = expect_reconnecting(&mut events).await;
        (cause, tokio::time::Instant::now())
    };
    let delayed_connack = async {
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        late.try_send(&Packet::ConnAck(mqttlink::codec::ConnAck {
            session_present: false,
            reason: ConnectReason::Success,
            properties: Properties::default().into(),
        }))
        .await
    };
    let ((cause, timed_out_at), _) = tokio::join!(timed_out, delayed_connack);
    assert!(
        matches!(cause, DisconnectCause::Failed(ClientError::ConnectTimeout)),
        "cause {cause:?}"
    );
    assert_about(timed_out_at - connecting_at, timeout, "connect timeout");
    let rest = late.until_closed().await;
    assert!(rest.is_empty(), "packets after CONNECT: {rest:?}");

    // CONNACK delayed by 1.5 s is within the timeout: the connection is accepted and the
    // queued publish goes out on it.
    let mut accepted = broker.accept().await;
    let connect = accepted.expect_connect().await;
    assert!(connect.clean_start, "no connection was accepted before");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    accepted
        .send(&Packet::ConnAck(mqttlink::codec::ConnAck {
            session_present: false,
            reason: ConnectReason::Success,
            properties: Properties::default().into(),
        }))
        .await;
    expect_connected(&mut events, false).await;
    let sent = expect_publish(accepted.recv().await);
    send_puback(&mut accepted, packet_id(&sent)).await;
    assert!(outcome(in_flight).await.is_ok());

    disconnect(&client).await;
    expect_only_disconnect(&mut accepted).await;
    drop(client);
    resume_clock_and_check_actors(baseline).await;
}

#[actix_rt::test]
async fn subscribe_in_flight_across_cut_answered_once() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = ScriptedBroker::bind().await;
    let (client, mut events) = start(options(broker.port()));
    let (recipient, _messages) = forward::<mqttlink::Message>();

    let mut first = broker.accept().await;
    first.accept_connect(false).await;
    expect_connected(&mut events, false).await;

    // SUBSCRIBE and UNSUBSCRIBE both sent, neither acknowledged, when the cut comes.
    let subscriber = client.clone();
    let subscribe = Subscribe::new(recipient.recipient()).filter(
        "cut/#".parse().unwrap(),
        SubscriptionOptions::with_qos(QoS::AtLeastOnce),
    );
    let subscribed = actix_rt::spawn(async move { subscriber.subscribe(subscribe).await });
    let Packet::Subscribe(sent_subscribe) = first.recv().await else {
        panic!("expected SUBSCRIBE");
    };
    let unsubscriber = client.clone();
    let unsubscribe = mqttlink::Unsubscribe::new().filter("old/#".parse().unwrap());
    let unsubscribed = actix_rt::spawn(async move { unsubscriber.unsubscribe(unsubscribe).await });
    let Packet::Unsubscribe(sent_unsubscribe) = first.recv().await else {
        panic!("expected UNSUBSCRIBE");
    };
    first.cut();
    expect_reconnecting(&mut events).await;
    assert!(!subscribed.is_finished(), "no answer before SUBACK");
    assert!(!unsubscribed.is_finished(), "no answer before UNSUBACK");

    // MQTT does not resend them on a resumed session, so the client sends them anew,
    // in their original order.
    let mut second = broker.accept().await;
    second.accept_connect(true).await;
    expect_connected(&mut events, true).await;
    let Packet::Subscribe(again) = second.recv().await else {
        panic!("expected SUBSCRIBE again");
    };
    assert_eq!(again.filters, sent_subscribe.filters);
    let Packet::Unsubscribe(again_unsubscribe) = second.recv().await else {
        panic!("expected UNSUBSCRIBE again");
    };
    assert_eq!(again_unsubscribe.filters, sent_unsubscribe.filters);
    assert_ne!(again.packet_id, again_unsubscribe.packet_id);

    // The broker acknowledges the new identifiers, in the opposite order. SUBACK for an
    // identifier that no flow uses any more would be a protocol violation.
    second
        .send(&Packet::UnsubAck(mqttlink::codec::UnsubAck {
            packet_id: again_unsubscribe.packet_id,
            reasons: vec![mqttlink::codec::UnsubAckReason::Success],
            properties: Properties::default().into(),
        }))
        .await;
    let removed = tokio::time::timeout(STEP, unsubscribed)
        .await
        .expect("unsubscribe resolves in time")
        .unwrap()
        .expect("unsubscribe succeeds");
    assert_eq!(removed.reasons, [mqttlink::codec::UnsubAckReason::Success]);
    assert!(
        !subscribed.is_finished(),
        "the subscribe still waits for its SUBACK"
    );
    second
        .send(&Packet::SubAck(SubAck {
            packet_id: again.packet_id,
            reasons: vec![SubAckReason::GrantedQoS1],
            properties: Properties::default().into(),
        }))
        .await;
    let granted = tokio::time::timeout(STEP, subscribed)
        .await
        .expect("subscribe resolves in time")
        .unwrap()
        .expect("subscribe succeeds");
    assert_eq!(granted.reasons, [SubAckReason::GrantedQoS1]);

    disconnect(&client).await;
    expect_only_disconnect(&mut second).await;
    drop(client);
    assert_actors_back_to(baseline).await;
}

/// Waits for the client to reconnect after a broker restart, skipping the events of
/// attempts that failed while the broker was down, and returns Session Present.
async fn await_reconnected(events: &mut UnboundedReceiver<Event>) -> bool {
    // Bounded: the restart takes well under the 100 attempts allowed here.
    for _ in 0..100 {
        match next(events).await {
            Event::Connected {
                session_present, ..
            } => return session_present,
            Event::Disconnected { .. } | Event::Reconnecting { .. } => {}
            other => panic!("expected the reconnect, got {other:?}"),
        }
    }
    panic!("no reconnect within 100 events");
}

#[actix_rt::test]
async fn mosquitto_restart_without_session_resubscribes() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let Some(mut broker) = RestartableMosquitto::start_with("reconnect-resubscribe", false).await
    else {
        return;
    };

    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let mut options = ClientOptions::new("127.0.0.1", broker.port())
            .client_id(&format!("resubscriber-{}", version.level()))
            .protocol(version)
            .reconnect(true)
            .reconnect_backoff(Duration::from_millis(5), Duration::from_millis(100))
            .resume_on_reconnect(true);
        if version == ProtocolVersion::V5 {
            options = options.session_expiry(Duration::from_secs(60));
        }
        let (client, mut events) = start(options);
        expect_connected(&mut events, false).await;
        let (messages, mut message_rx) = forward::<mqttlink::Message>();
        let subscribe = Subscribe::new(messages.recipient()).filter(
            "lost/#".parse().unwrap(),
            SubscriptionOptions::with_qos(QoS::AtLeastOnce),
        );
        tokio::time::timeout(STEP, client.subscribe(subscribe))
            .await
            .expect("subscribe resolves in time")
            .unwrap();

        // Without persistence the restarted broker has no session for the client.
        broker.restart().await;
        let session_present = await_reconnected(&mut events).await;
        assert!(!session_present, "{version:?}: the broker lost the session");
        match next(&mut events).await {
            Event::Resubscribed { filters } => assert_eq!(filters, 1, "{version:?}"),
            other => panic!("{version:?}: expected Resubscribed, got {other:?}"),
        }

        // The client's own message, sent after the SUBSCRIBE on the same connection,
        // reaches it only through the restored subscription.
        let publish = Publish::new(topic("lost/again"), "after restart").qos(QoS::AtLeastOnce);
        tokio::time::timeout(STEP, client.publish(publish))
            .await
            .expect("publish resolves in time")
            .unwrap();
        let message = next(&mut message_rx).await;
        assert_eq!(message.topic, topic("lost/again"), "{version:?}");
        assert_eq!(message.payload, "after restart");

        disconnect(&client).await;
        drop(client);
        assert_actors_back_to(baseline).await;
    }
}

/// A client whose messages all go to a [`Gate`], connected to a broker with a new
/// session, with the test's handles.
struct GatedClient {
    client: Client,
    events: UnboundedReceiver<Event>,
    /// Lets the gate handle the messages behind the first one.
    release: tokio::sync::oneshot::Sender<()>,
    /// The payloads the gate handled, in order.
    seen: tokio::sync::mpsc::UnboundedReceiver<bytes::Bytes>,
    connection: Connection,
}

/// Starts a client with clean start 0 whose messages all go to a new [`Gate`], and
/// connects it to `broker` with a new session.
async fn connect_gated(broker: &ScriptedBroker, version: ProtocolVersion) -> GatedClient {
    let options = options(broker.port()).protocol(version).clean_start(false);
    let (client, mut events) = start(options);
    let (gate, release, seen_rx) = Gate::start_closed();
    client.set_default_recipient(gate.recipient());
    let mut connection = broker.accept().await;
    connection.accept_connect(false).await;
    expect_connected(&mut events, false).await;
    GatedClient {
        client,
        events,
        release,
        seen: seen_rx,
        connection,
    }
}

/// Returns the payloads the gate handles up to and including "marker", at most four.
async fn payloads_until_marker(
    seen: &mut tokio::sync::mpsc::UnboundedReceiver<bytes::Bytes>,
) -> Vec<bytes::Bytes> {
    let mut payloads = Vec::new();
    for _ in 0..4 {
        let payload = next(seen).await;
        let marker = payload == "marker";
        payloads.push(payload);
        if marker {
            break;
        }
    }
    payloads
}

/// Has the gate block on QoS 1 message "a" and fills its mailbox with "b", both
/// acknowledged. Returns the packet identifiers for "a", "b" and "c".
async fn qos1_gate_full(
    connection: &mut Connection,
    seen: &mut tokio::sync::mpsc::UnboundedReceiver<bytes::Bytes>,
) -> Vec<PacketId> {
    let ids: Vec<PacketId> = (1..=3).map(|id| PacketId::try_from(id).unwrap()).collect();
    connection.send(&qos1_publish(ids[0], false, "a")).await;
    expect_puback(connection, ids[0], "a, held by the gate").await;
    assert_eq!(next(seen).await, "a");
    connection.send(&qos1_publish(ids[1], false, "b")).await;
    expect_puback(connection, ids[1], "b, in the mailbox").await;
    ids
}

/// Sends QoS 1 message "c" with identifier `id`, and in the same write PUBREL for an
/// identifier with no flow. Its PUBCOMP 0x92 shows that the client read "c" first and
/// sent no PUBACK for it, because "c" waits for room.
async fn send_c_then_probe(connection: &mut Connection, id: PacketId, dup: bool, what: &str) {
    let unknown = PacketId::try_from(99).unwrap();
    let mut write = connection.encode(&qos1_publish(id, dup, "c"));
    write.extend_from_slice(&connection.encode(&pubrel(unknown)));
    connection.send_raw(&write).await;
    let not_found = PubCompReason::PacketIdentifierNotFound;
    expect_pubcomp(connection, unknown, not_found, what).await;
}

/// Makes QoS 2 message "c" wait for room in the gate's mailbox: the gate blocks on "a"
/// and "b" fills its mailbox, so both count as delivered. PUBREL for "a" in the same
/// write as "c" shows by its PUBCOMP that the client read "c" first. Returns the packet
/// identifiers of "a", "b" and "c".
async fn qos2_c_waits_for_room(
    connection: &mut Connection,
    seen: &mut tokio::sync::mpsc::UnboundedReceiver<bytes::Bytes>,
    what: &str,
) -> Vec<PacketId> {
    let ids: Vec<PacketId> = (1..=3).map(|id| PacketId::try_from(id).unwrap()).collect();
    connection.send(&qos2_publish(ids[0], false, "a")).await;
    expect_pubrec(connection, ids[0], &format!("{what}: a, held by the gate")).await;
    assert_eq!(next(seen).await, "a", "{what}");
    connection.send(&qos2_publish(ids[1], false, "b")).await;
    expect_pubrec(connection, ids[1], &format!("{what}: b, in the mailbox")).await;
    let mut write = connection.encode(&qos2_publish(ids[2], false, "c"));
    write.extend_from_slice(&connection.encode(&pubrel(ids[0])));
    connection.send_raw(&write).await;
    expect_pubcomp(
        connection,
        ids[0],
        PubCompReason::Success,
        &format!("{what}: a released"),
    )
    .await;
    ids
}

/// Cuts the connection while a QoS 2 message waits for room in a full mailbox, lets
/// the broker send it again on the resumed session, and returns the payloads the gate
/// handled after the first message. The client counts the waiting message as delivered
/// from the moment it waits there, so the copy is not delivered again, and it gets
/// PUBREC once the first copy has been delivered. The client is
/// disconnected and its actors stopped before this returns, so a failed check of the
/// payloads leaves nothing running for the next test.
async fn payloads_after_cut_waiting_for_room(version: ProtocolVersion) -> Vec<bytes::Bytes> {
    let what = format!("{version:?}");
    let baseline = live_actor_count();
    let broker = ScriptedBroker::bind().await;
    let GatedClient {
        client,
        mut events,
        release,
        mut seen,
        connection: mut first,
    } = connect_gated(&broker, version).await;

    let ids = qos2_c_waits_for_room(&mut first, &mut seen, &what).await;
    first.cut();
    expect_reconnecting(&mut events).await;

    // On the resumed session the broker sends "c" again, because it got no PUBREC for
    // it, and releases "b". The copy of "c" gets no PUBREC while the first copy still
    // waits in the mailbox: PUBCOMP for "b" comes first.
    let mut second = broker.accept().await;
    second.accept_connect(true).await;
    expect_connected(&mut events, true).await;
    second.send(&qos2_publish(ids[2], true, "c")).await;
    second.send(&pubrel(ids[1])).await;
    expect_pubcomp(
        &mut second,
        ids[1],
        PubCompReason::Success,
        &format!("{what}: b released"),
    )
    .await;

    // Once the gate takes its mailbox, "c" is delivered and gets its PUBREC.
    release.send(()).unwrap();
    expect_pubrec(&mut second, ids[2], &format!("{what}: c, after delivery")).await;
    second.send(&pubrel(ids[2])).await;
    expect_pubcomp(
        &mut second,
        ids[2],
        PubCompReason::Success,
        &format!("{what}: c released"),
    )
    .await;
    second.send(&qos0_publish("exactly/once", "marker")).await;
    let payloads = payloads_until_marker(&mut seen).await;

    disconnect(&client).await;
    expect_only_disconnect(&mut second).await;
    drop(client);
    assert_actors_back_to(baseline).await;
    payloads
}

#[actix_rt::test]
async fn qos2_waiting_for_room_survives_cut() {
    let _serial = SERIAL.lock().await;
    let v3 = payloads_after_cut_waiting_for_room(ProtocolVersion::V3_1_1).await;
    let v5 = payloads_after_cut_waiting_for_room(ProtocolVersion::V5).await;
    assert_eq!(v3, ["b", "c", "marker"], "3.1.1: each message once");
    assert_eq!(v5, ["b", "c", "marker"], "5.0: each message once");
}

fn qos1_publish(packet_id: PacketId, dup: bool, payload: &'static str) -> Packet {
    Packet::Publish(mqttlink::codec::Publish {
        dup,
        delivery: Delivery::AtLeastOnce(packet_id),
        retain: false,
        topic: Some(topic("at/least/once")),
        properties: Properties::default().into(),
        payload: payload.into(),
    })
}

async fn expect_puback(connection: &mut Connection, packet_id: PacketId, what: &str) {
    match connection.recv().await {
        Packet::PubAck(ack) => assert_eq!(ack.packet_id, packet_id, "{what}"),
        other => panic!("{what}: expected PUBACK, got {other:?}"),
    }
}

/// Checks that a QoS 1 message still waiting for room in a full mailbox when the
/// connection is cut reaches the recipient at least once. The copy the broker sends on
/// the resumed session is acknowledged only once the gate has room for it.
#[actix_rt::test]
async fn qos1_waiting_for_room_survives_cut() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = ScriptedBroker::bind().await;
    let GatedClient {
        client,
        mut events,
        release,
        mut seen,
        connection: mut first,
    } = connect_gated(&broker, ProtocolVersion::V5).await;

    // The gate blocks on "a", and "b" fills its mailbox, so both are acknowledged.
    let ids = qos1_gate_full(&mut first, &mut seen).await;

    // "c" has to wait for room. A PUBREL for an unknown identifier in the same write
    // shows by its PUBCOMP that the client read "c" first and sent no PUBACK for it.
    send_c_then_probe(&mut first, ids[2], false, "read after c").await;
    first.cut();
    expect_reconnecting(&mut events).await;

    // The broker got no PUBACK for "c", so it sends it again on the resumed session.
    // The gate still blocks, so that copy waits for room too.
    let mut second = broker.accept().await;
    second.accept_connect(true).await;
    expect_connected(&mut events, true).await;
    send_c_then_probe(&mut second, ids[2], true, "read after resent c").await;

    release.send(()).unwrap();
    expect_puback(&mut second, ids[2], "c, once the gate has room").await;
    second.send(&qos0_publish("at/least/once", "marker")).await;
    let payloads = payloads_until_marker(&mut seen).await;
    assert_eq!(payloads.first().map(|p| &p[..]), Some(&b"b"[..]));
    assert!(
        payloads.iter().any(|payload| payload == "c"),
        "c lost: {payloads:?}"
    );
    assert_eq!(payloads.last().map(|p| &p[..]), Some(&b"marker"[..]));

    disconnect(&client).await;
    expect_only_disconnect(&mut second).await;
    drop(client);
    assert_actors_back_to(baseline).await;
}

/// Waits a bounded time for the live actor count to return to `baseline` and returns
/// whether it did, so a test can clean up before it fails.
async fn actors_returned_to(baseline: usize, wait: Duration) -> bool {
    let settled = async {
        while live_actor_count() != baseline {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(wait, settled).await.is_ok()
}

/// Checks that dropping every handle stops a reconnected client whose supervisor still
/// waits on a send handed over by the previous connection, to a recipient that does not
/// drain its mailbox. A supervisor whose pending send keeps it from stopping leaves the
/// connection open and its actors running for as long as the recipient is blocked.
#[actix_rt::test]
async fn dropped_handles_stop_despite_handed_over_send() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = ScriptedBroker::bind().await;
    let GatedClient {
        client,
        mut events,
        release,
        seen: mut gate_seen,
        connection: mut first,
    } = connect_gated(&broker, ProtocolVersion::V5).await;

    // The gate blocks on "a" and "b" fills its mailbox. "c" waits for room, and the
    // PUBCOMP for an unknown identifier shows that the client read it.
    let ids = qos1_gate_full(&mut first, &mut gate_seen).await;
    send_c_then_probe(&mut first, ids[2], false, "read after c").await;

    // The cut hands the send of "c" over to the supervisor, which then reconnects.
    first.cut();
    expect_reconnecting(&mut events).await;
    let mut second = broker.accept().await;
    second.accept_connect(true).await;
    expect_connected(&mut events, true).await;

    drop(client);
    let wait = Duration::from_secs(2);
    let closed = tokio::time::timeout(wait, second.until_closed()).await;
    let stopped = actors_returned_to(baseline, wait).await;

    // Opening the gate lets the handed-over send resolve, which stops a leaked client
    // before the checks below fail.
    let _ = release.send(());
    assert_actors_back_to(baseline).await;
    assert!(
        closed.is_ok(),
        "the connection stayed open after every handle was dropped"
    );
    assert!(
        stopped,
        "actors still running after every handle was dropped: {} over the baseline",
        live_actor_count() - baseline
    );
}

/// Checks that a disconnect leaves a QoS 2 message with the broker while its first
/// copy, from before a cut, still waits for room. The copy the broker sent again on the
/// resumed session got no PUBREC, so the broker keeps the message for the session.
#[actix_rt::test]
async fn disconnect_leaves_waiting_qos2_with_broker() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = ScriptedBroker::bind().await;
    let GatedClient {
        client,
        mut events,
        release,
        seen: mut gate_seen,
        connection: mut first,
    } = connect_gated(&broker, ProtocolVersion::V5).await;

    let ids = qos2_c_waits_for_room(&mut first, &mut gate_seen, "V5").await;
    first.cut();
    expect_reconnecting(&mut events).await;
    let mut second = broker.accept().await;
    second.accept_connect(true).await;
    expect_connected(&mut events, true).await;
    // PUBREL for an identifier with no flow comes after the copy of "c", so its
    // PUBCOMP shows that the client read the copy and sent no PUBREC for it.
    let unknown = PacketId::try_from(99).unwrap();
    let mut write = second.encode(&qos2_publish(ids[2], true, "c"));
    write.extend_from_slice(&second.encode(&pubrel(unknown)));
    second.send_raw(&write).await;
    expect_pubcomp(
        &mut second,
        unknown,
        PubCompReason::PacketIdentifierNotFound,
        "unknown identifier after the copy of c",
    )
    .await;

    // Only DISCONNECT follows: "c" never left the mailbox wait, so it stays the
    // broker's.
    disconnect(&client).await;
    expect_only_disconnect(&mut second).await;
    drop(client);
    assert_actors_back_to(baseline).await;
    drop(release);
}

/// Checks that a disconnect during the reconnect backoff ends the client while its
/// supervisor waits on a send handed over to a recipient that never drains its mailbox,
/// and that the statistics meanwhile report no connection.
#[actix_rt::test]
async fn backoff_disconnect_with_handed_over_send() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = ScriptedBroker::bind().await;
    let long_wait = Duration::from_secs(600);
    let options = options(broker.port())
        .clean_start(false)
        .reconnect_backoff(long_wait, long_wait);
    let (client, mut events) = start(options);
    let (gate, _release, mut gate_seen) = Gate::start_closed();
    client.set_default_recipient(gate.recipient());
    let mut first = broker.accept().await;
    first.accept_connect(false).await;
    expect_connected(&mut events, false).await;

    // The gate blocks on "a" and "b" fills its mailbox, so "c" waits for room.
    let ids = qos1_gate_full(&mut first, &mut gate_seen).await;
    send_c_then_probe(&mut first, ids[2], false, "read after c").await;
    let stats = client.stats().await.unwrap();
    assert!(stats.connected, "connected while c waits for room");
    assert_eq!(stats.inflight_in, 1, "c waits for room unacknowledged");

    first.cut();
    expect_reconnecting(&mut events).await;
    let stats = client.stats().await.unwrap();
    assert!(!stats.connected, "connected reported during the backoff");
    assert_eq!(stats.live_actors, baseline + 1, "only the supervisor runs");

    disconnect(&client).await;
    assert_actors_back_to(baseline).await;
    assert!(matches!(client.stats().await, Err(ClientError::Stopped)));
}

/// Checks that cuts while a QoS 1 message waits for room in a recipient that stays
/// blocked do not pile up copies of it. Each cut hands the waiting send to the
/// supervisor, and the broker's copy on the next connection waits for room again. At
/// most two copies, the first and one resend, may reach the recipient. One more copy per
/// cut means that its bounded mailbox grows with the number of reconnects.
#[actix_rt::test]
async fn repeated_cuts_keep_mailbox_bounded() {
    const CUTS: usize = 5;
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = ScriptedBroker::bind().await;
    let GatedClient {
        client,
        mut events,
        release,
        seen: mut gate_seen,
        mut connection,
    } = connect_gated(&broker, ProtocolVersion::V5).await;

    // The gate blocks on "a" and "b" fills its mailbox.
    let ids = qos1_gate_full(&mut connection, &mut gate_seen).await;

    // On each connection "c" arrives, waits for room, and the connection is cut.
    for cut in 0..CUTS {
        let what = format!("cut {cut}: read after c");
        send_c_then_probe(&mut connection, ids[2], cut > 0, &what).await;
        connection.cut();
        expect_reconnecting(&mut events).await;
        connection = broker.accept().await;
        connection.accept_connect(true).await;
        expect_connected(&mut events, true).await;
    }

    release.send(()).unwrap();
    connection
        .send(&qos0_publish("at/least/once", "marker"))
        .await;
    let mut payloads = Vec::new();
    for _ in 0..=CUTS + 2 {
        let payload = next(&mut gate_seen).await;
        let marker = payload == "marker";
        payloads.push(payload);
        if marker {
            break;
        }
    }
    disconnect(&client).await;
    expect_only_disconnect(&mut connection).await;
    drop(client);
    assert_actors_back_to(baseline).await;

    let copies = payloads.iter().filter(|payload| *payload == "c").count();
    assert!(
        (1..=2).contains(&copies),
        "{copies} copies of c after {CUTS} cuts: {payloads:?}"
    );
}

/// Checks a QoS 1 publish in flight when a reconnect finds no session (Session Present
/// 0). The client promises to send the PUBLISH again with DUP and its packet identifier,
/// so the message is not dropped, and the publish completes on that PUBACK.
#[actix_rt::test]
async fn lost_session_resends_qos1_publish() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = ScriptedBroker::bind().await;
    let (client, mut events) = start(options(broker.port()));

    let mut first = broker.accept().await;
    first.accept_connect(false).await;
    expect_connected(&mut events, false).await;
    let in_flight = spawn_publish(&client, "t/kept", QoS::AtLeastOnce);
    let sent = expect_publish(first.recv().await);
    first.cut();
    expect_reconnecting(&mut events).await;

    let mut second = broker.accept().await;
    let connect = second.accept_connect(false).await;
    assert!(!connect.clean_start, "reconnect asks to resume");
    expect_connected(&mut events, false).await;
    let resent = expect_publish(second.recv().await);
    assert!(resent.dup, "resent PUBLISH carries DUP");
    assert_eq!(packet_id(&resent), packet_id(&sent));
    assert_eq!(resent.topic, sent.topic);
    assert_eq!(resent.payload, sent.payload);
    send_puback(&mut second, packet_id(&resent)).await;
    let completed = outcome(in_flight).await.unwrap();
    assert_eq!(completed.reason, Some(PubAckReason::Success));

    // A publish made after the resend goes out as a new message.
    let fresh = spawn_publish(&client, "t/fresh", QoS::AtLeastOnce);
    let fresh_sent = expect_publish(second.recv().await);
    assert!(!fresh_sent.dup);
    assert_eq!(fresh_sent.topic, Some(topic("t/fresh")));
    send_puback(&mut second, packet_id(&fresh_sent)).await;
    assert!(outcome(fresh).await.is_ok());

    disconnect(&client).await;
    expect_only_disconnect(&mut second).await;
    drop(client);
    assert_actors_back_to(baseline).await;
}

/// Checks a QoS 2 publish past PUBREC when the reconnect finds no session (Session
/// Present 0). The broker no longer has the message's flow, so the client must not
/// release it with PUBREL [MQTT-3.2.2-5]. A broker without the flow replies to such a
/// PUBREL with PUBCOMP 0x92, which must not turn into a successful publish.
#[actix_rt::test]
async fn lost_session_qos2_not_reported_ok() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = ScriptedBroker::bind().await;
    let (client, mut events) = start(options(broker.port()));

    let mut first = broker.accept().await;
    first.accept_connect(false).await;
    expect_connected(&mut events, false).await;
    let in_flight = spawn_publish(&client, "t/exactly-once", QoS::ExactlyOnce);
    let id = packet_id(&expect_publish(first.recv().await));
    first
        .send(&Packet::PubRec(PubRec {
            packet_id: id,
            reason: PubAckReason::Success,
            properties: Properties::default().into(),
        }))
        .await;
    assert!(matches!(first.recv().await, Packet::PubRel(_)));
    first.cut();
    expect_reconnecting(&mut events).await;

    let mut second = broker.accept().await;
    second.accept_connect(false).await;
    expect_connected(&mut events, false).await;

    // A publish made now marks the end of what the client sends on its own after
    // CONNACK. A client may instead publish the old message again as a new QoS 2 flow,
    // which this broker completes, so that the test accepts either way.
    let marker = spawn_publish(&client, "t/marker", QoS::AtLeastOnce);
    let mut old_pubrels = Vec::new();
    let mut republished = None;
    let mut republish_released = false;
    let mut marker_id = None;
    for _ in 0..8 {
        match second.recv().await {
            Packet::PubRel(rel) if Some(rel.packet_id) == republished => {
                send_pubcomp(&mut second, rel.packet_id, PubCompReason::Success).await;
                republish_released = true;
            }
            Packet::PubRel(rel) => {
                let not_found = PubCompReason::PacketIdentifierNotFound;
                send_pubcomp(&mut second, rel.packet_id, not_found).await;
                old_pubrels.push(rel);
            }
            Packet::Publish(publish) if publish.topic == Some(topic("t/marker")) => {
                marker_id = Some(packet_id(&publish));
            }
            Packet::Publish(publish) if publish.topic == Some(topic("t/exactly-once")) => {
                let republished_id = packet_id(&publish);
                second
                    .send(&Packet::PubRec(PubRec {
                        packet_id: republished_id,
                        reason: PubAckReason::Success,
                        properties: Properties::default().into(),
                    }))
                    .await;
                republished = Some(republished_id);
            }
            other => panic!("expected PUBREL or PUBLISH, got {other:?}"),
        }
        if marker_id.is_some() && (republished.is_none() || republish_released) {
            break;
        }
    }
    let marker_id = marker_id.expect("marker PUBLISH within 8 packets");
    send_puback(&mut second, marker_id).await;
    assert!(outcome(marker).await.is_ok());

    disconnect(&client).await;
    expect_only_disconnect(&mut second).await;
    let released = outcome(in_flight).await;
    drop(client);
    assert_actors_back_to(baseline).await;

    assert!(
        old_pubrels.is_empty(),
        "PUBREL sent for a flow of the lost session: {old_pubrels:?}"
    );
    if republished.is_none() {
        assert!(
            released.is_err(),
            "publish reported delivered after PUBCOMP 0x92: {released:?}"
        );
    }
}

async fn send_puback(connection: &mut Connection, packet_id: PacketId) {
    connection
        .send(&Packet::PubAck(PubAck {
            packet_id,
            reason: PubAckReason::Success,
            properties: Properties::default().into(),
        }))
        .await;
}

async fn send_pubcomp(connection: &mut Connection, packet_id: PacketId, reason: PubCompReason) {
    connection
        .send(&Packet::PubComp(PubComp {
            packet_id,
            reason,
            properties: Properties::default().into(),
        }))
        .await;
}

/// Checks that the resends of a resumed session keep to the Receive Maximum of the new
/// CONNACK, which may be lower than the one of the connection the flows started on
/// (MQTT 5.0 section 4.9).
#[actix_rt::test]
async fn resume_keeps_new_receive_maximum() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = ScriptedBroker::bind().await;
    let options = options(broker.port()).disconnect_timeout(Duration::from_millis(100));
    let (client, mut events) = start(options);

    let mut first = broker.accept().await;
    first.accept_connect(false).await;
    expect_connected(&mut events, false).await;
    let in_flight: Vec<_> = ["t/1", "t/2", "t/3"]
        .into_iter()
        .map(|name| spawn_publish(&client, name, QoS::AtLeastOnce))
        .collect();
    let sent = first.recv_packets(3).await;
    assert!(
        sent.iter().all(|p| matches!(p, Packet::Publish(_))),
        "{sent:?}"
    );
    first.cut();
    expect_reconnecting(&mut events).await;

    let mut second = broker.accept().await;
    let limited = Properties {
        receive_maximum: std::num::NonZeroU16::new(1),
        ..Properties::default()
    };
    second.accept_connect_with(true, limited).await;
    expect_connected(&mut events, true).await;
    let resent = expect_publish(second.recv().await);
    assert!(resent.dup);

    // Nothing is acknowledged, so the client may send nothing more before DISCONNECT.
    disconnect(&client).await;
    let rest = second.until_closed().await;
    for task in in_flight {
        assert!(outcome(task).await.is_err(), "no publish was acknowledged");
    }
    drop(client);
    assert_actors_back_to(baseline).await;

    let extra: Vec<&Packet> = rest
        .iter()
        .filter(|packet| matches!(packet, Packet::Publish(_)))
        .collect();
    assert!(
        extra.is_empty(),
        "PUBLISH beyond Receive Maximum 1 after the resend of {:?}: {extra:?}",
        resent.delivery
    );
}

/// After the PUBREL for an unknown PUBREC, the broker keeps that identifier in use until
/// its PUBCOMP, for as long as its session lives. When the connection ends before the
/// PUBCOMP and the session resumes, the client must send that PUBREL again (MQTT 5.0
/// section 4.4) or keep the identifier out of new flows. Otherwise the broker may take
/// the new QoS 2 PUBLISH for a duplicate of the old flow and drop it.
#[actix_rt::test]
async fn released_id_kept_across_resumed_session() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = ScriptedBroker::bind().await;
    let (client, mut events) = start(options(broker.port()).protocol(ProtocolVersion::V5));

    let mut first = broker.accept().await;
    first.accept_connect(false).await;
    expect_connected(&mut events, false).await;
    let released = PacketId::try_from(1).unwrap();
    first
        .send(&Packet::PubRec(PubRec {
            packet_id: released,
            reason: PubAckReason::Success,
            properties: Properties::default().into(),
        }))
        .await;
    match first.recv().await {
        Packet::PubRel(rel) => assert_eq!(rel.packet_id, released),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    first.cut();
    expect_reconnecting(&mut events).await;

    let mut second = broker.accept().await;
    second.accept_connect(true).await;
    expect_connected(&mut events, true).await;
    let in_flight = spawn_publish(&client, "t/after-resume", QoS::ExactlyOnce);

    // Bounded: the client sends at most a PUBREL before the PUBLISH.
    let mut pubrel_resent = false;
    let mut publish = None;
    for _ in 0..2 {
        match second.recv().await {
            Packet::PubRel(rel) if rel.packet_id == released => pubrel_resent = true,
            Packet::Publish(sent) => {
                publish = Some(sent);
                break;
            }
            other => panic!("expected PUBREL or PUBLISH, got {other:?}"),
        }
    }
    let publish = publish.expect("the client sends the new PUBLISH");

    let id = packet_id(&publish);
    second
        .send(&Packet::PubRec(PubRec {
            packet_id: id,
            reason: PubAckReason::Success,
            properties: Properties::default().into(),
        }))
        .await;
    match second.recv().await {
        Packet::PubRel(rel) => assert_eq!(rel.packet_id, id),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    send_pubcomp(&mut second, id, PubCompReason::Success).await;
    assert!(outcome(in_flight).await.is_ok());

    disconnect(&client).await;
    expect_only_disconnect(&mut second).await;
    drop(client);
    assert_actors_back_to(baseline).await;

    // Checked after the client stopped, so that a failure leaves no actor behind for
    // the next test.
    assert!(
        pubrel_resent || packet_id(&publish) != released,
        "the new QoS 2 PUBLISH took identifier {released:?}, which the broker's session \
         may still use, and no PUBREL for it was sent again"
    );
}

/// Checks that every way a publish ends returns its place in the request queue: written
/// at QoS 0, rejected by PUBACK, and a QoS 1 and a QoS 2 publish acknowledged only
/// after a reconnect resumed their flows. The four places are then free again.
#[actix_rt::test]
async fn queue_room_returned_across_reconnect() {
    const ROOM: usize = 4;
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = ScriptedBroker::bind().await;
    let options = options(broker.port())
        .protocol(ProtocolVersion::V5)
        .max_pending_requests(ROOM);
    let (client, mut events) = start(options);

    let mut first = broker.accept().await;
    first.accept_connect(false).await;
    expect_connected(&mut events, false).await;
    let resumed_qos1 = spawn_publish(&client, "t/qos1", QoS::AtLeastOnce);
    let first_qos1 = expect_publish(first.recv().await);
    let resumed_qos2 = spawn_publish(&client, "t/qos2", QoS::ExactlyOnce);
    let first_qos2 = expect_publish(first.recv().await);
    let written = spawn_publish(&client, "t/qos0", QoS::AtMostOnce);
    expect_publish(first.recv().await);
    let rejected = spawn_publish(&client, "t/rejected", QoS::AtLeastOnce);
    let rejected_id = packet_id(&expect_publish(first.recv().await));

    assert!(outcome(written).await.is_ok());
    first
        .send(&Packet::PubAck(PubAck {
            packet_id: rejected_id,
            reason: PubAckReason::UnspecifiedError,
            properties: Properties::default().into(),
        }))
        .await;
    let rejection = outcome(rejected).await;
    assert!(
        matches!(rejection, Err(ClientError::Rejected { .. })),
        "{rejection:?}"
    );
    first
        .send(&Packet::PubRec(PubRec {
            packet_id: packet_id(&first_qos2),
            reason: PubAckReason::Success,
            properties: Properties::default().into(),
        }))
        .await;
    assert!(matches!(first.recv().await, Packet::PubRel(_)));
    first.cut();
    expect_reconnecting(&mut events).await;

    let mut second = broker.accept().await;
    second.accept_connect(true).await;
    expect_connected(&mut events, true).await;
    let mut resent = second.recv_packets(2).await;
    resent.sort_by_key(|packet| matches!(packet, Packet::PubRel(_)));
    assert!(
        matches!(&resent[..], [Packet::Publish(publish), Packet::PubRel(rel)]
            if packet_id(publish) == packet_id(&first_qos1) && rel.packet_id == packet_id(&first_qos2)),
        "expected the resent PUBLISH and PUBREL, got {resent:?}"
    );
    send_puback(&mut second, packet_id(&first_qos1)).await;
    send_pubcomp(&mut second, packet_id(&first_qos2), PubCompReason::Success).await;
    assert!(outcome(resumed_qos1).await.is_ok());
    assert!(outcome(resumed_qos2).await.is_ok());

    let mut replies = Vec::new();
    for index in 0..ROOM {
        let publish = Publish::new(topic("t/after"), format!("{index}")).qos(QoS::AtLeastOnce);
        let reply = client.try_publish(publish);
        assert!(
            reply.is_ok(),
            "place {index} still taken: {:?}",
            reply.err()
        );
        replies.push(actix_rt::spawn(reply.unwrap()));
    }
    let extra = client.try_publish(Publish::new(topic("t/after"), "extra"));
    assert!(
        matches!(extra, Err(ClientError::QueueFull)),
        "more places than {ROOM}"
    );
    for _ in 0..ROOM {
        let sent = expect_publish(second.recv().await);
        send_puback(&mut second, packet_id(&sent)).await;
    }
    for reply in replies {
        assert!(outcome(reply).await.is_ok());
    }
    let stats = client.stats().await.unwrap();
    assert_eq!(stats.queued_requests, 0);
    assert_eq!(stats.inflight_out, 0);

    disconnect(&client).await;
    expect_only_disconnect(&mut second).await;
    drop(client);
    assert_actors_back_to(baseline).await;
}
