//! Connection cuts at every packet boundary of the QoS 1 and QoS 2 flows, in both
//! directions, against a fake broker that follows the protocol and keeps the session.
//!
//! For each protocol version, QoS and flow direction (the client publishes, the broker
//! publishes, or both at the same time), a run without faults first counts the packets
//! the broker reads and writes on the connection. Then one run per packet and fault
//! style cuts the first connection there: before the broker reads the packet, with a
//! reset while it is in transit, before the broker writes it, or after half of it was
//! written. Each fault runs once on the first connection and again on each of the first
//! three connections. When only the client publishes, it also runs once followed by a
//! broker restart that lost the session. Last, on a paused clock, the broker stalls
//! before each packet it writes: it keeps the socket open and acts on nothing, so the
//! client must give up through its PINGRESP deadline (its connect timeout before
//! CONNACK) and reconnect.
//!
//! Every run sends three messages on each of two topics in each direction it covers.
//! It checks that QoS 1 arrived at least once and QoS 2 exactly once, except that a
//! broker that lost its session owes only at least once. The first copies must arrive
//! in order per topic, and each publish caller must get one successful outcome, only
//! after the broker wrote the final acknowledgement. Live actors and open file
//! descriptors must return to their baseline after each run. Run it with
//! `cargo test --test fault_injection -- --nocapture` to see the table of counts.
//!
//! The only test of this file measures process-wide counts, so the file holds no other
//! test that could change them meanwhile.
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

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::rc::Rc;
use std::time::Duration;

use actor_broker::{assert_actors_back_to, forward, STEP};
use bytes::Bytes;
use mqttlink::codec::{ProtocolVersion, PubAckReason, QoS, TopicName};
use mqttlink::{
    live_actor_count, Client, ClientError, ClientOptions, Disconnect, Message, Publish,
    PublishOutcome,
};
use reconnect_broker::{ConnectionReport, Ended, Fault, Restart, Script, SessionBroker};
use tokio::task::JoinHandle;

/// Topics of every run; each gets `MESSAGES_PER_TOPIC` messages.
const TOPICS: [&str; 2] = ["faults/a", "faults/b"];

/// Messages sent on each topic per run.
const MESSAGES_PER_TOPIC: usize = 3;

/// Connections that repeat the fault in the runs that cut more than once.
const REPEATED_CUTS: usize = 3;

/// Direction of the messages of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// The client publishes to the broker.
    Outbound,
    /// The broker publishes to the client.
    Inbound,
    /// Both publish at the same time, so the flows of both directions interleave.
    Both,
}

impl Flow {
    fn client_publishes(self) -> bool {
        matches!(self, Self::Outbound | Self::Both)
    }

    fn broker_publishes(self) -> bool {
        matches!(self, Self::Inbound | Self::Both)
    }
}

/// How often and with what session handling a run repeats its fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeat {
    /// The first connection is cut, the next runs clean.
    Once,
    /// Each of the first `REPEATED_CUTS` connections is cut at the same point.
    Repeated,
    /// The first connection is cut, and the broker accepts the next one as if it
    /// restarted without the session.
    SessionLost,
    /// The first connection stalls, on a paused clock, until the client gives up on it
    /// through its PINGRESP deadline (or its connect timeout, before CONNACK).
    Stalled,
}

impl Repeat {
    /// Returns how the fault ends the first connection.
    fn ends_with(self) -> Ended {
        match self {
            Self::Stalled => Ended::Stalled,
            Self::Once | Self::Repeated | Self::SessionLost => Ended::Cut,
        }
    }
}

/// One combination of version, QoS and direction.
#[derive(Debug, Clone, Copy)]
struct Case {
    version: ProtocolVersion,
    qos: QoS,
    flow: Flow,
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let version = match self.version {
            ProtocolVersion::V5 => "v5",
            _ => "v3.1.1",
        };
        let flow = match self.flow {
            Flow::Outbound => "client publishes",
            Flow::Inbound => "broker publishes",
            Flow::Both => "both publish",
        };
        write!(f, "{version} QoS {} {flow}", self.qos.level())
    }
}

/// What one run observed.
#[derive(Debug)]
struct Run {
    /// One report per connection the broker served.
    connections: Vec<ConnectionReport>,
    /// Messages published, in both directions together.
    sent: usize,
    /// Copies delivered to the recipient: the broker for outbound runs, the
    /// application's recipient for inbound runs.
    delivered: usize,
    /// Copies beyond the first of each message.
    duplicates: usize,
}

/// Counts of one row of the printed table.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    cut_points: usize,
    runs: usize,
    connections: usize,
    sent: usize,
    delivered: usize,
    duplicates: usize,
}

impl Tally {
    fn add(&mut self, run: &Run) {
        self.runs += 1;
        self.connections += run.connections.len();
        self.sent += run.sent;
        self.delivered += run.delivered;
        self.duplicates += run.duplicates;
    }
}

fn topic(name: &str) -> TopicName {
    name.parse().unwrap()
}

/// Returns every message of a run as (topic, payload), in the order sent.
fn messages() -> Vec<(&'static str, Bytes)> {
    let mut messages = Vec::new();
    for sequence in 0..MESSAGES_PER_TOPIC {
        for name in TOPICS {
            messages.push((name, Bytes::from(format!("{name}#{sequence}"))));
        }
    }
    messages
}

fn sequence_of(payload: &[u8]) -> usize {
    let text = std::str::from_utf8(payload).unwrap();
    text.rsplit('#').next().unwrap().parse().unwrap()
}

/// Keep-alive interval and connect timeout of the runs that stall, short enough that the
/// client gives up within the `STEP` bound of every wait. Runs without a stall keep the
/// defaults, so a slow machine never adds a PINGREQ that would shift the packet counts.
const STALL_DETECTION: Duration = Duration::from_secs(1);

fn options(case: Case, port: u16, stalls: bool) -> ClientOptions {
    let mut options = ClientOptions::new("127.0.0.1", port);
    if stalls {
        options = options
            .keep_alive(STALL_DETECTION)
            .connect_timeout(STALL_DETECTION);
    }
    let options = options
        .client_id("fault-injection")
        .protocol(case.version)
        .reconnect(true)
        .reconnect_backoff(Duration::from_millis(1), Duration::from_millis(1))
        .resume_on_reconnect(true);
    // The session outlives each connection: the broker keeps it for a minute (v5) or
    // until a clean session (3.1.1). A 3.1.1 client asks for clean session 0 from its
    // first CONNECT, whose CONNACK a fault may cut off, so it adopts the session the
    // broker created then.
    if case.version == ProtocolVersion::V5 {
        options.session_expiry(Duration::from_secs(60))
    } else {
        options.clean_start(false).adopt_broker_session(true)
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Waits, yielding to the actors, until the open file descriptors are back at
/// `baseline`.
async fn assert_fds_back_to(baseline: usize, what: &str) {
    let settled = async {
        while open_fds() != baseline {
            tokio::task::yield_now().await;
        }
    };
    let result = tokio::time::timeout(STEP, settled).await;
    assert!(
        result.is_ok(),
        "{what}: open file descriptors {} did not return to {baseline}",
        open_fds()
    );
}

/// Checks the copies that arrived, in arrival order, and returns the number of
/// duplicates: every message at least once, exactly once when `exactly_once`, and the
/// first copies of each topic in the order sent.
fn check_arrivals(arrived: &[(String, Bytes)], exactly_once: bool, what: &str) -> usize {
    let mut first_copies: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    let mut seen = HashSet::new();
    for (name, payload) in arrived {
        if seen.insert(payload.clone()) {
            first_copies
                .entry(name.as_str())
                .or_default()
                .push(sequence_of(payload));
        }
    }
    let expected: Vec<usize> = (0..MESSAGES_PER_TOPIC).collect();
    for name in TOPICS {
        assert_eq!(
            first_copies.get(name),
            Some(&expected),
            "{what}: first copies on {name} missing or out of order; arrived {arrived:?}"
        );
    }
    let duplicates = arrived.len() - seen.len();
    if exactly_once {
        assert_eq!(
            duplicates, 0,
            "{what}: QoS 2 duplicates; arrived {arrived:?}"
        );
    }
    duplicates
}

/// Runs one client against a broker that plays `scripts`, with the messages flowing as
/// `case` sets, and checks the guarantees.
async fn run(case: Case, scripts: &[Script], what: &str) -> Run {
    // A stall is detected only after the keep-alive interval, which a paused clock
    // passes at once. The clock runs again before the leak checks, whose waits yield in
    // a loop that a paused clock would never time out.
    let stalls = scripts
        .iter()
        .any(|script| matches!(script.fault, Some(Fault::StallBeforeWrite(_))));
    if stalls {
        tokio::time::pause();
    }
    let baseline = live_actor_count();
    let broker = Rc::new(SessionBroker::bind().await);
    let client = options(case, broker.port(), stalls).start().unwrap();
    let (recipient, mut message_rx) = forward::<Message>();
    client.set_default_recipient(recipient.clone().recipient());

    if case.flow.broker_publishes() {
        for (name, payload) in messages() {
            broker.queue(topic(name), payload, case.qos);
        }
    }
    let publishes = if case.flow.client_publishes() {
        start_publishes(&client, &broker, case.qos)
    } else {
        Vec::new()
    };
    let serving = {
        let broker = Rc::clone(&broker);
        let scripts = scripts.to_vec();
        actix_rt::spawn(async move { broker.serve(&scripts).await })
    };

    let mut received = Vec::new();
    await_publishes(publishes, what).await;
    if case.flow.broker_publishes() {
        await_inbound(&broker, &mut message_rx, &mut received, what).await;
    }
    if stalls {
        tokio::time::resume();
    }

    tokio::time::timeout(STEP, client.disconnect(Disconnect::new()))
        .await
        .unwrap_or_else(|_| panic!("{what}: disconnect resolves in time"))
        .unwrap();
    // The last fault may have cut the connection that carried DISCONNECT.
    broker.stop();
    let connections = tokio::time::timeout(STEP, serving)
        .await
        .unwrap_or_else(|_| panic!("{what}: broker ends in time"))
        .unwrap();
    drop(client);
    assert_actors_back_to(baseline).await;

    // A marker sent after the client stopped reaches the recipient after every message
    // the client handed to it, so the messages before it are all there are.
    let marker = Bytes::from_static(b"end of run");
    recipient
        .send(marker_message(marker.clone()))
        .await
        .unwrap();
    while let Some(message) = message_rx.recv().await {
        if message.payload == marker {
            break;
        }
        received.push((message.topic.as_str().to_owned(), message.payload));
    }

    let exactly_once = case.qos == QoS::ExactlyOnce
        && !scripts
            .iter()
            .any(|script| script.restart == Restart::LoseSession);
    let mut sent = 0;
    let mut delivered = 0;
    let mut duplicates = 0;
    if case.flow.client_publishes() {
        let arrived = broker.session.borrow().received.clone();
        sent += messages().len();
        delivered += arrived.len();
        duplicates += check_arrivals(&arrived, exactly_once, &format!("{what}, at the broker"));
    }
    if case.flow.broker_publishes() {
        sent += messages().len();
        delivered += received.len();
        duplicates += check_arrivals(&received, exactly_once, &format!("{what}, at the client"));
    }
    Run {
        connections,
        sent,
        delivered,
        duplicates,
    }
}

/// A publish's payload, its outcome, and whether the broker had written the final
/// acknowledgement when the caller got the outcome.
type Answered = (Bytes, Result<PublishOutcome, ClientError>, bool);

/// Queues every message of a run as a publish of `client`, and returns one task per
/// publish.
fn start_publishes(
    client: &Client,
    broker: &Rc<SessionBroker>,
    qos: QoS,
) -> Vec<JoinHandle<Answered>> {
    let mut publishes = Vec::new();
    for (name, payload) in messages() {
        let publish = Publish::new(topic(name), payload.clone()).qos(qos);
        let pending = client.try_publish(publish).unwrap();
        let broker = Rc::clone(broker);
        // The broker runs on this thread, so its state at the moment the caller gets the
        // outcome shows whether the acknowledgement was already written.
        publishes.push(actix_rt::spawn(async move {
            let outcome = pending.await;
            let acknowledged = broker.session.borrow().acknowledged.contains(&payload);
            (payload, outcome, acknowledged)
        }));
    }
    publishes
}

/// Checks that every publish succeeded, and only after its final acknowledgement.
async fn await_publishes(publishes: Vec<JoinHandle<Answered>>, what: &str) {
    for task in publishes {
        let (payload, outcome, acknowledged) = tokio::time::timeout(STEP, task)
            .await
            .unwrap_or_else(|_| panic!("{what}: publish resolves in time"))
            .unwrap();
        let outcome = outcome
            .unwrap_or_else(|error| panic!("{what}: publish of {payload:?} failed: {error}"));
        assert_eq!(outcome.reason, Some(PubAckReason::Success), "{what}");
        assert!(
            acknowledged,
            "{what}: publish of {payload:?} completed before the final acknowledgement"
        );
    }
}

fn marker_message(payload: Bytes) -> Message {
    Message {
        topic: topic("marker"),
        payload,
        qos: QoS::AtMostOnce,
        retain: false,
        dup: false,
        properties: mqttlink::codec::Properties::default().into(),
    }
}

/// Collects messages until every message arrived and the broker saw every flow it
/// started complete.
async fn await_inbound(
    broker: &SessionBroker,
    message_rx: &mut tokio::sync::mpsc::UnboundedReceiver<Message>,
    received: &mut Vec<(String, Bytes)>,
    what: &str,
) {
    let expected: HashSet<Bytes> = messages().into_iter().map(|(_, payload)| payload).collect();
    loop {
        while let Ok(message) = message_rx.try_recv() {
            received.push((message.topic.as_str().to_owned(), message.payload));
        }
        let seen: HashSet<Bytes> = received
            .iter()
            .map(|(_, payload)| payload.clone())
            .collect();
        if expected.is_subset(&seen) && broker.session.borrow().outbound_done() {
            return;
        }
        let progress = async {
            tokio::select! {
                message = message_rx.recv() => {
                    let message = message.expect("recipient alive");
                    received.push((message.topic.as_str().to_owned(), message.payload));
                }
                () = broker.changed.notified() => {}
            }
        };
        tokio::time::timeout(STEP, progress)
            .await
            .unwrap_or_else(|_| panic!("{what}: no progress; received {received:?}"));
    }
}

/// Returns a stall at each packet the broker wrote in the run without faults.
fn stalls(clean: &ConnectionReport) -> Vec<Fault> {
    (0..clean.writes).map(Fault::StallBeforeWrite).collect()
}

/// Returns every cut of the first connection: each style at each packet the broker
/// read (CONNECT and the flows, not DISCONNECT) or wrote in the run without faults.
fn cuts(clean: &ConnectionReport) -> Vec<Fault> {
    let reads_before_disconnect = clean.reads - 1;
    let mut faults = Vec::new();
    for index in 0..reads_before_disconnect {
        faults.push(Fault::CutBeforeRead(index));
        faults.push(Fault::ResetInsideRead(index));
    }
    for index in 0..clean.writes {
        faults.push(Fault::CutBeforeWrite(index));
        faults.push(Fault::CutInsideWrite(index));
    }
    faults
}

fn scripts(fault: Fault, repeat: Repeat) -> Vec<Script> {
    let cut = Script {
        fault: Some(fault),
        restart: Restart::KeepSession,
    };
    match repeat {
        Repeat::Once | Repeat::Stalled => vec![cut],
        Repeat::Repeated => vec![cut; REPEATED_CUTS],
        Repeat::SessionLost => vec![
            cut,
            Script {
                fault: None,
                restart: Restart::LoseSession,
            },
        ],
    }
}

#[actix_rt::test]
async fn every_cut_point_keeps_delivery_guarantees() {
    let mut cases = Vec::new();
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
            for flow in [Flow::Outbound, Flow::Inbound, Flow::Both] {
                cases.push(Case { version, qos, flow });
            }
        }
    }

    // The first run opens what the runtime keeps for later runs, so the baseline of
    // file descriptors is taken after it.
    let warm_up = run(cases[0], &[Script::CLEAN], "warm-up").await;
    assert_eq!(warm_up.connections.len(), 1);
    let fd_baseline = open_fds();

    let mut rows = Vec::new();
    for case in cases {
        let clean = run(case, &[Script::CLEAN], &format!("{case}, no fault")).await;
        assert_eq!(clean.connections.len(), 1, "{case}: one connection");
        assert_eq!(clean.duplicates, 0, "{case}: no duplicates without faults");
        let cuts = cuts(&clean.connections[0]);
        let mut plans = vec![
            (Repeat::Once, cuts.clone()),
            (Repeat::Repeated, cuts.clone()),
        ];
        // A broker that lost the session lost the messages queued in it too, so only
        // runs in which just the client publishes can check delivery after that.
        if case.flow == Flow::Outbound {
            plans.push((Repeat::SessionLost, cuts));
        }
        plans.push((Repeat::Stalled, stalls(&clean.connections[0])));

        for (repeat, faults) in plans {
            let mut tally = Tally {
                cut_points: faults.len(),
                ..Tally::default()
            };
            for &fault in &faults {
                let what = format!("{case}, {fault:?}, {repeat:?}");
                let run = run(case, &scripts(fault, repeat), &what).await;
                assert_eq!(
                    run.connections[0].ended,
                    repeat.ends_with(),
                    "{what}: the fault ended the first connection"
                );
                assert!(run.connections.len() >= 2, "{what}: the client reconnected");
                if repeat == Repeat::Stalled && fault != Fault::StallBeforeWrite(0) {
                    assert_eq!(
                        run.connections[0].unanswered_pings, 1,
                        "{what}: one PINGREQ, then the PINGRESP deadline ended the connection"
                    );
                }
                tally.add(&run);
                assert_fds_back_to(fd_baseline, &what).await;
            }
            rows.push((case, repeat, tally));
        }
    }

    println!(
        "{:<32} {:<12} {:>5} {:>5} {:>6} {:>5} {:>6} {:>5}",
        "case", "cuts", "points", "runs", "conns", "sent", "recvd", "dups"
    );
    let mut total = Tally::default();
    for (case, repeat, tally) in &rows {
        println!(
            "{:<32} {:<12} {:>5} {:>5} {:>6} {:>5} {:>6} {:>5}",
            case.to_string(),
            format!("{repeat:?}"),
            tally.cut_points,
            tally.runs,
            tally.connections,
            tally.sent,
            tally.delivered,
            tally.duplicates
        );
        total.cut_points += tally.cut_points;
        total.runs += tally.runs;
        total.connections += tally.connections;
        total.sent += tally.sent;
        total.delivered += tally.delivered;
        total.duplicates += tally.duplicates;
    }
    println!(
        "{:<32} {:<12} {:>5} {:>5} {:>6} {:>5} {:>6} {:>5}",
        "total",
        "",
        total.cut_points,
        total.runs,
        total.connections,
        total.sent,
        total.delivered,
        total.duplicates
    );
    assert!(total.runs > 0);
}
