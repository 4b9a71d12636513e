//! Mosquitto stopped and started again several times during a stream of 10,000 QoS 1
//! and 10,000 QoS 2 messages between two mqttlink clients with persistent sessions.
//!
//! The broker is the Debian build of Mosquitto 2.0.11 at `/usr/sbin/mosquitto` (or
//! `MQTTLINK_MOSQUITTO`), started by the test on a free loopback port with
//! `persistence true` and `max_queued_messages 0` (no limit) in a directory of its
//! own. Each restart stops it with SIGTERM, and the broker writes its persistence
//! file as it exits. SIGKILL would lose whatever the broker acknowledged since its
//! last autosave. A publisher that got PUBACK or PUBCOMP has rightly forgotten such a
//! message, so no client could recover it, and the counts would measure the broker's
//! autosave interval instead of the client. With SIGTERM every loss or duplicate
//! that the counts show is the client's.
//!
//! The publisher streams both QoS levels at once, with automatic reconnect and
//! `resume_on_reconnect`. The restarts come at fixed numbers of acknowledged
//! publishes, so each one lands while both clients are in the middle of the stream.
//! Each test prints, per QoS, the messages sent, acknowledged, received, distinct,
//! duplicated and lost, and requires no lost QoS 1 message and no lost or duplicated
//! QoS 2 message. A test is skipped, and says so, when no Mosquitto binary exists,
//! unless `MQTTLINK_REQUIRE_MOSQUITTO` is set.
//!
//! One kind of QoS 2 duplicate is the broker's. Mosquitto 2.0.11 sometimes sends a
//! QoS 2 PUBLISH again after a restart although it had sent PUBREL for it before,
//! which MQTT forbids (MQTT 5.0 section 4.3.3). A subscriber that already completed
//! the flow has forgotten the packet identifier, so it cannot tell the copy from a
//! new message and delivers it. The test counts such copies in the broker's log and
//! allows at most that many QoS 2 duplicates.

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

use std::collections::VecDeque;
use std::time::Duration;

use actor_broker::{assert_actors_back_to, forward, STEP};
use mqttlink::codec::{ProtocolVersion, QoS, SubscriptionOptions, TopicName};
use mqttlink::{
    live_actor_count, Client, ClientError, ClientOptions, Disconnect, Event, Message, Publish,
    Subscribe,
};
use reconnect_broker::RestartableMosquitto;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// `live_actor_count` is process-wide, so the tests of this file run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Messages streamed at each QoS level.
const MESSAGES: usize = 10_000;

/// Broker restarts during the stream.
const RESTARTS: usize = 4;

/// Publishes of one QoS level in flight at once.
const WINDOW: usize = 32;

/// Bound on the whole stream, restarts included.
const DEADLINE: Duration = Duration::from_secs(120);

/// Topic of the message published after every other one is acknowledged. Mosquitto
/// delivers a session's messages in order, so once it arrives nothing else is due.
const LAST_TOPIC: &str = "restart/last";

#[actix_rt::test]
async fn restarts_lose_nothing_mqtt_3_1_1() {
    run(ProtocolVersion::V3_1_1).await;
}

#[actix_rt::test]
async fn restarts_lose_nothing_mqtt_5() {
    run(ProtocolVersion::V5).await;
}

/// Options of a client whose session outlives the connection and the broker process.
///
/// Both versions connect with clean start 0 from the first connection on, and 5.0
/// adds a Session Expiry Interval of an hour. Under 3.1.1 a session begun with clean
/// session 1 ends with its connection. Under 5.0 such a session outlives the
/// connection, but Mosquitto 2.0.11 does not write it to its persistence file: its
/// writer (`persist__client_save` in `src/persist_write.c`) saves only clients that
/// connected with clean start 0. A 5.0 client that started clean therefore finds
/// Session Present 0 after the first restart, and the messages queued for it are
/// gone. `resume_on_reconnect` is on as well, and asks for the session again on
/// every reconnect.
///
/// Mosquitto 2.0.11 accepts at most `max_inflight_messages` (20 by default) inbound
/// QoS 2 messages in flight per client. It announces that limit to a 5.0 client as
/// Receive Maximum, which mqttlink obeys, but 3.1.1 has no way to announce it, and a
/// 3.1.1 client above it gets PUBREC without a reason code for the message the
/// broker dropped, then a closed connection. The 3.1.1 client therefore keeps
/// `max_inflight` at 20 itself.
fn persistent(version: ProtocolVersion, port: u16, client_id: &str) -> ClientOptions {
    let options = ClientOptions::new("127.0.0.1", port)
        .client_id(client_id)
        .protocol(version)
        .clean_start(false)
        .reconnect(true)
        .reconnect_backoff(Duration::from_millis(5), Duration::from_millis(100))
        .resume_on_reconnect(true);
    if version.is_v5() {
        options.session_expiry(Duration::from_secs(3600))
    } else {
        options.max_inflight(20)
    }
}

/// Counts of one QoS level.
#[derive(Debug)]
struct Tally {
    qos: QoS,
    sent: usize,
    acknowledged: usize,
    failures: Vec<String>,
    /// Deliveries per message index.
    deliveries: Vec<u32>,
}

impl Tally {
    fn new(qos: QoS) -> Self {
        Self {
            qos,
            sent: 0,
            acknowledged: 0,
            failures: Vec::new(),
            deliveries: vec![0; MESSAGES],
        }
    }

    fn received(&self) -> usize {
        self.deliveries.iter().map(|&count| count as usize).sum()
    }

    fn distinct(&self) -> usize {
        self.deliveries.iter().filter(|&&count| count > 0).count()
    }

    fn duplicates(&self) -> usize {
        self.received() - self.distinct()
    }

    /// Returns the indexes that were published but never delivered.
    fn lost(&self) -> Vec<usize> {
        (0..self.sent)
            .filter(|&index| self.deliveries[index] == 0)
            .collect()
    }

    fn row(&self) -> String {
        format!(
            "{:<4} {:>6} {:>13} {:>9} {:>9} {:>11} {:>5}",
            self.qos.level(),
            self.sent,
            self.acknowledged,
            self.received(),
            self.distinct(),
            self.duplicates(),
            self.lost().len()
        )
    }
}

/// The outcome of one publish, reported by a stream task.
struct Acknowledgement {
    qos: QoS,
    result: Result<(), ClientError>,
}

fn topic(qos: QoS) -> TopicName {
    format!("restart/q{}", qos.level()).parse().unwrap()
}

/// Publishes `MESSAGES` messages at `qos`, with `WINDOW` in flight at once, and sends
/// the outcome of each to `acknowledgements`.
fn spawn_stream(
    client: &Client,
    qos: QoS,
    acknowledgements: UnboundedSender<Acknowledgement>,
) -> tokio::task::JoinHandle<()> {
    let client = client.clone();
    actix_rt::spawn(async move {
        let mut window = VecDeque::with_capacity(WINDOW);
        for index in 0..MESSAGES {
            if window.len() == WINDOW {
                report(window.pop_front(), qos, &acknowledgements).await;
            }
            let sender = client.clone();
            let publish = Publish::new(topic(qos), index.to_string()).qos(qos);
            window.push_back(actix_rt::spawn(async move {
                sender.publish(publish).await.map(drop)
            }));
        }
        while !window.is_empty() {
            report(window.pop_front(), qos, &acknowledgements).await;
        }
    })
}

async fn report(
    task: Option<tokio::task::JoinHandle<Result<(), ClientError>>>,
    qos: QoS,
    acknowledgements: &UnboundedSender<Acknowledgement>,
) {
    let Some(task) = task else {
        return;
    };
    let result = task.await.expect("publish task ends normally");
    // The receiver lives until the stream is over.
    let _ = acknowledgements.send(Acknowledgement { qos, result });
}

/// Records one delivered message. Returns `true` for the last message.
fn record(message: &Message, tallies: &mut [Tally; 2]) -> bool {
    if message.topic.as_str() == LAST_TOPIC {
        return true;
    }
    let tally = tallies
        .iter_mut()
        .find(|tally| topic(tally.qos) == message.topic)
        .unwrap_or_else(|| panic!("message on an unexpected topic: {message:?}"));
    assert_eq!(message.qos, tally.qos, "delivered QoS of {message:?}");
    let index: usize = std::str::from_utf8(&message.payload)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| panic!("payload is not an index: {message:?}"));
    tally.deliveries[index] += 1;
    false
}

/// Returns the Session Present flag of every CONNACK a client received, in order.
///
/// A CONNACK's event travels through the supervisor and may arrive after the messages
/// of that connection, so this waits up to `STEP` per event until `expected` CONNACKs
/// are in, then takes whatever else has arrived.
async fn sessions_present(events: &mut UnboundedReceiver<Event>, expected: usize) -> Vec<bool> {
    let mut present = Vec::new();
    loop {
        let event = if present.len() < expected {
            match tokio::time::timeout(STEP, events.recv()).await {
                Ok(Some(event)) => event,
                Ok(None) | Err(_) => break,
            }
        } else {
            match events.try_recv() {
                Ok(event) => event,
                Err(_) => break,
            }
        };
        if let Event::Connected {
            session_present, ..
        } = event
        {
            present.push(session_present);
        }
    }
    present
}

async fn disconnect(client: &Client) {
    tokio::time::timeout(STEP, client.disconnect(Disconnect::new()))
        .await
        .expect("disconnect resolves in time")
        .expect("disconnect succeeds");
}

/// A client with the channels its messages and events arrive on.
struct Connected {
    client: Client,
    events: UnboundedReceiver<Event>,
}

/// Starts a client with [`persistent`] options and subscribes to its events.
fn start_client(version: ProtocolVersion, port: u16, client_id: &str) -> Connected {
    let client = persistent(version, port, client_id).start().unwrap();
    let (events, event_rx) = forward::<Event>();
    client.subscribe_events(events.recipient());
    Connected {
        client,
        events: event_rx,
    }
}

/// Restarts the broker when the number of publish outcomes reaches each of
/// `restart_at`, records every delivered message, and publishes the last message once
/// every other publish has its outcome. Returns the number of restarts and the task
/// of the last publish when the last message arrives.
async fn stream_with_restarts(
    broker: &mut RestartableMosquitto,
    publisher: &Client,
    acknowledgement_rx: &mut UnboundedReceiver<Acknowledgement>,
    message_rx: &mut UnboundedReceiver<Message>,
    tallies: &mut [Tally; 2],
) -> (
    usize,
    Option<tokio::task::JoinHandle<Result<(), ClientError>>>,
) {
    let total = 2 * MESSAGES;
    let restart_at: Vec<usize> = (1..=RESTARTS)
        .map(|number| total * number / (RESTARTS + 1))
        .collect();
    let mut restarts = 0;
    let mut outcomes = 0;
    let mut last_message = None;
    loop {
        tokio::select! {
            Some(acknowledgement) = acknowledgement_rx.recv() => {
                let tally = tallies
                    .iter_mut()
                    .find(|tally| tally.qos == acknowledgement.qos)
                    .expect("a stream of this QoS");
                match acknowledgement.result {
                    Ok(()) => tally.acknowledged += 1,
                    Err(error) => tally.failures.push(error.to_string()),
                }
                outcomes += 1;
                if restart_at.get(restarts) == Some(&outcomes) {
                    broker.restart().await;
                    restarts += 1;
                }
                if outcomes == total {
                    let publish =
                        Publish::new(LAST_TOPIC.parse().unwrap(), "last").qos(QoS::ExactlyOnce);
                    let sender = publisher.clone();
                    last_message = Some(actix_rt::spawn(async move {
                        sender.publish(publish).await.map(drop)
                    }));
                }
            }
            Some(message) = message_rx.recv() => {
                if record(&message, tallies) {
                    return (restarts, last_message);
                }
            }
        }
    }
}

fn print_counts(
    version: ProtocolVersion,
    restarts: usize,
    tallies: &[Tally; 2],
    publisher_sessions: &[bool],
    subscriber_sessions: &[bool],
) {
    println!(
        "Mosquitto stopped with SIGTERM and started again {restarts} times, \
         MQTT {version:?}"
    );
    println!("qos    sent  acknowledged  received  distinct  duplicates  lost");
    for tally in tallies {
        println!("{}", tally.row());
    }
    for tally in tallies {
        if let Some(first) = tally.failures.first() {
            println!(
                "QoS {}: {} publishes failed, the first with: {first}",
                tally.qos.level(),
                tally.failures.len()
            );
        }
    }
    println!("Session Present per CONNACK: publisher {publisher_sessions:?}");
    println!("Session Present per CONNACK: subscriber {subscriber_sessions:?}");
}

/// Counts the QoS 2 PUBLISH packets the broker sent `client_id` again, with DUP set,
/// after it had sent PUBREL for the same packet identifier. A PUBLISH without DUP
/// starts a new message, so it ends the release of its identifier.
fn resent_after_release(log: &str, client_id: &str) -> usize {
    let pubrel = format!("Sending PUBREL to {client_id} (m");
    let publish = format!("Sending PUBLISH to {client_id} (d");
    let mut released = std::collections::HashSet::new();
    let mut resent = 0;
    for line in log.lines() {
        if let Some(rest) = line.split_once(&pubrel).map(|(_, rest)| rest) {
            released.insert(rest.trim_end_matches(')').to_owned());
        } else if let Some(rest) = line.split_once(&publish).map(|(_, rest)| rest) {
            // The rest reads `1, q2, r0, m17, 'topic', ...`.
            let fields: Vec<&str> = rest.splitn(4, ", ").collect();
            let [dup, qos, _retain, packet_id] = fields[..] else {
                continue;
            };
            if qos != "q2" {
                continue;
            }
            let packet_id = packet_id.split(',').next().unwrap_or_default();
            let packet_id = packet_id.trim_start_matches('m').to_owned();
            if dup == "0" {
                released.remove(&packet_id);
            } else if released.contains(&packet_id) {
                resent += 1;
            }
        }
    }
    resent
}

#[test]
fn resent_after_release_counts_only_released_ids() {
    let log = "\
1: Sending PUBLISH to sub (d0, q2, r0, m7, 'restart/q2', ... (4 bytes))
1: Sending PUBLISH to sub (d0, q2, r0, m8, 'restart/q2', ... (4 bytes))
1: Sending PUBLISH to sub (d0, q1, r0, m9, 'restart/q1', ... (4 bytes))
1: Sending PUBREL to sub (m7)
1: Sending PUBREL to other (m8)
2: Sending PUBLISH to sub (d1, q2, r0, m7, 'restart/q2', ... (4 bytes))
2: Sending PUBLISH to sub (d1, q2, r0, m8, 'restart/q2', ... (4 bytes))
2: Sending PUBLISH to sub (d1, q1, r0, m9, 'restart/q1', ... (4 bytes))
2: Sending PUBLISH to sub (d0, q2, r0, m7, 'restart/q2', ... (4 bytes))
3: Sending PUBLISH to sub (d1, q2, r0, m7, 'restart/q2', ... (4 bytes))
";
    assert_eq!(resent_after_release(log, "sub"), 1);
}

fn assert_counts(tallies: &[Tally; 2], resent_by_broker: usize) {
    for tally in tallies {
        assert!(
            tally.failures.is_empty(),
            "QoS {} publishes failed: {:?}",
            tally.qos.level(),
            tally.failures
        );
        assert_eq!(
            tally.acknowledged,
            tally.sent,
            "QoS {} acknowledged",
            tally.qos.level()
        );
    }
    let [at_least_once, exactly_once] = tallies;
    assert_eq!(at_least_once.lost(), Vec::<usize>::new(), "QoS 1 lost");
    assert_eq!(exactly_once.lost(), Vec::<usize>::new(), "QoS 2 lost");
    assert!(
        exactly_once.duplicates() <= resent_by_broker,
        "QoS 2 duplicates: {}, of which the broker's PUBLISH after PUBREL explains at \
         most {resent_by_broker}",
        exactly_once.duplicates()
    );
}

/// Checks that every reconnect of a client found its session on the broker.
fn assert_sessions_resumed(client: &str, sessions: &[bool]) {
    assert!(
        sessions.len() > RESTARTS,
        "{client} connected {} times",
        sessions.len()
    );
    assert!(
        sessions[1..].iter().all(|&present| present),
        "{client} reconnected to a lost session: {sessions:?}"
    );
}

async fn run(version: ProtocolVersion) {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let name = if version.is_v5() {
        "restart-5"
    } else {
        "restart-311"
    };
    let Some(mut broker) = RestartableMosquitto::start(name).await else {
        return;
    };
    // The subscriber's queue may grow past the shared harness's limit of 10,000.
    broker.append_config("max_queued_messages 0\n");
    broker.restart().await;
    let port = broker.port();

    let mut subscriber = start_client(version, port, &format!("{name}-subscriber"));
    let (messages, mut message_rx) = forward::<Message>();
    let subscribe = Subscribe::new(messages.recipient()).filter(
        "restart/#".parse().unwrap(),
        SubscriptionOptions::with_qos(QoS::ExactlyOnce),
    );
    tokio::time::timeout(STEP, subscriber.client.subscribe(subscribe))
        .await
        .expect("subscribe resolves in time")
        .unwrap();

    let mut publisher = start_client(version, port, &format!("{name}-publisher"));
    let (acknowledgement_tx, mut acknowledgement_rx) = unbounded_channel();
    let mut tallies = [Tally::new(QoS::AtLeastOnce), Tally::new(QoS::ExactlyOnce)];
    let streams = [
        spawn_stream(
            &publisher.client,
            QoS::AtLeastOnce,
            acknowledgement_tx.clone(),
        ),
        spawn_stream(&publisher.client, QoS::ExactlyOnce, acknowledgement_tx),
    ];
    // Each stream calls `publish` once for every index.
    for tally in &mut tallies {
        tally.sent = MESSAGES;
    }

    let collected = tokio::time::timeout(
        DEADLINE,
        stream_with_restarts(
            &mut broker,
            &publisher.client,
            &mut acknowledgement_rx,
            &mut message_rx,
            &mut tallies,
        ),
    )
    .await;
    let publisher_sessions = sessions_present(&mut publisher.events, RESTARTS + 1).await;
    let subscriber_sessions = sessions_present(&mut subscriber.events, RESTARTS + 1).await;
    let restarts = collected.as_ref().map_or(0, |(restarts, _)| *restarts);
    print_counts(
        version,
        restarts,
        &tallies,
        &publisher_sessions,
        &subscriber_sessions,
    );

    let Ok((restarts, last_message)) = collected else {
        panic!(
            "the stream did not end within {DEADLINE:?}:\n{}",
            broker.log_tail()
        );
    };
    assert_eq!(restarts, RESTARTS, "restarts during the stream");
    for stream in streams {
        tokio::time::timeout(STEP, stream)
            .await
            .expect("stream ends in time")
            .expect("stream task ends normally");
    }
    let last = tokio::time::timeout(STEP, last_message.expect("last message published"))
        .await
        .expect("last publish resolves in time")
        .expect("last publish task ends normally");
    assert!(last.is_ok(), "last publish: {last:?}");
    let resent_by_broker = resent_after_release(&broker.log(), &format!("{name}-subscriber"));
    println!("QoS 2 PUBLISH sent again by the broker after its PUBREL: {resent_by_broker}");
    assert_counts(&tallies, resent_by_broker);
    assert_sessions_resumed("publisher", &publisher_sessions);
    assert_sessions_resumed("subscriber", &subscriber_sessions);

    disconnect(&publisher.client).await;
    disconnect(&subscriber.client).await;
    drop(publisher);
    drop(subscriber);
    assert_actors_back_to(baseline).await;
}
