//! Leak test of the connection group: thousands of connection attempts that fail in
//! every way a broker or the caller can make them fail.
//!
//! Each fault kind runs many attempts against a scripted fake broker on loopback, using
//! the public API only. In every attempt the caller queues one QoS 1 publish, and the
//! kinds that race the caller against the broker send `Disconnect` or drop the client
//! after a random delay. After every attempt the test checks that each call and the event
//! stream ended in bounded time, with the expected error. After every kind it checks
//! that live mqttlink actors, tokio runtime tasks and open file descriptors are back at
//! their baseline, and that the live heap allocations did not grow.
//!
//! Tokio's `num_alive_tasks` (checked on tokio 1.54) counts only tasks spawned on the
//! runtime itself. Actors and `actix_rt::spawn` futures run on actix's `LocalSet`, which
//! that metric does not see, so a detached local future (a forgotten timer, say) is
//! caught by the heap check instead.
//!
//! All kinds run in one test function, one after the other, because file descriptors,
//! live actors and heap allocations are counted for the whole process. Run it with
//! `cargo test --test group_lifecycle -- --nocapture` to see one summary line per kind.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "support/fault_broker.rs"]
mod fault_broker;

use std::alloc::System;
use std::fmt;
use std::io;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use mqttlink::codec::{ConnectReason, DisconnectReason, ProtocolVersion, QoS, TopicName};
use mqttlink::{
    live_actor_count, ClientError, ClientOptions, ClosedBy, Disconnect, DisconnectCause, Event,
    Publish, PublishOutcome,
};
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use fault_broker::{connack_v3, connack_v5, BrokerReport, ClosedPort, Delay, FaultBroker, Script};

#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Upper bound on one whole attempt: start, failure or disconnect, and release of the
/// event recipient. Reaching it means the client hung. It is twice
/// `LONG_CONNECT_TIMEOUT`, so a connect timeout is never mistaken for a hang.
const ATTEMPT_BOUND: Duration = Duration::from_secs(10);

/// Upper bound on the wait for the counts to return to their baseline after a kind.
const SETTLE_BOUND: Duration = Duration::from_secs(5);

/// Connect timeout for kinds where the broker always replies, long enough that a loaded
/// machine does not turn an expected error into a timeout.
const LONG_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connect timeout for kinds where the broker may never complete a packet.
const SHORT_CONNECT_TIMEOUT: Duration = Duration::from_millis(20);

/// Connect timeout that no attempt may wait for, because it exceeds `ATTEMPT_BOUND`.
const UNREACHED_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// Keep-alive interval of every kind except the one that lets it expire. It is the
/// client's default, so the timer is armed but never fires during an attempt.
const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(60);

/// How long `Disconnect` waits for the probe publish's acknowledgement, which the
/// broker never sends, before it sends DISCONNECT anyway.
const DISCONNECT_TIMEOUT: Duration = Duration::from_millis(5);

/// Attempts of each kind run before its baseline is taken, so that runtime caches,
/// blocking-pool threads and buffers have reached their working size.
const WARM_UP_ATTEMPTS: usize = 50;

/// Live heap allocations a kind may leave above its baseline. A leak grows the count by
/// at least one per attempt, so by 1,000 or more per kind. The slack is an estimate that
/// covers test-harness threads starting during a kind. In the runs so far, every kind
/// ended with exactly its baseline count.
const HEAP_SLACK: usize = 64;

/// Wrong outcomes kept per kind for the failure message; the rest are only counted.
const KEPT_FAILURES: usize = 5;

#[test]
fn failed_attempts_leave_nothing_behind() {
    // The lock comes first because the actix system's runtime opens file descriptors.
    let _counts = fault_broker::lock_process_counts();
    actix_rt::System::new().block_on(run_every_kind());
}

/// Runs every fault kind, prints one summary line each and fails if any kind leaked or
/// saw a wrong outcome.
async fn run_every_kind() {
    let kinds = [
        Kind::Refused,
        Kind::CloseAtOnce,
        Kind::Garbage,
        Kind::ConnAckRefusedV3,
        Kind::ConnAckRefusedV5,
        Kind::Silent,
        Kind::LostAfterConnAck,
        Kind::KeepAliveExpired,
        Kind::DisconnectRace,
        Kind::DropWhileConnecting,
        Kind::CallerEndsSilent,
        Kind::DisconnectVersusFailure,
        Kind::DropVersusFailure,
        Kind::Mixed,
    ];

    let mut summaries = Vec::new();
    for kind in kinds {
        summaries.push(run_kind(kind).await);
    }

    for summary in &summaries {
        println!("{summary}");
    }
    let failed: Vec<&str> = summaries
        .iter()
        .filter(|summary| !summary.is_clean())
        .map(|summary| summary.kind.name())
        .collect();
    assert!(
        failed.is_empty(),
        "kinds with leaks or wrong outcomes (details in the output above): {}",
        failed.join(", ")
    );
}

/// One way of making a connection attempt fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Nothing listens on the port.
    Refused,
    /// The broker closes the connection as soon as it accepts it.
    CloseAtOnce,
    /// The broker replies to CONNECT with bytes that are not a valid CONNACK.
    Garbage,
    /// The broker refuses with each MQTT 3.1.1 return code 1 to 5.
    ConnAckRefusedV3,
    /// The broker refuses with MQTT 5 CONNACK reason codes.
    ConnAckRefusedV5,
    /// The broker never replies, so the connect timeout fires.
    Silent,
    /// The caller sends `Disconnect` while the successful CONNACK is on its way.
    DisconnectRace,
    /// The caller drops its last `Client` handle while the CONNACK is on its way.
    DropWhileConnecting,
    /// The broker accepts with CONNACK and then sends DISCONNECT, closes the connection
    /// or sends an invalid packet.
    LostAfterConnAck,
    /// The broker accepts with CONNACK and then never replies to PINGREQ, so the keep-alive
    /// timeout of 1 s ends the connection.
    KeepAliveExpired,
    /// The broker never replies and the connect timeout is longer than `ATTEMPT_BOUND`,
    /// and the caller sends `Disconnect` or drops the client after a random delay. The
    /// attempt ends in time only if the caller's request ends it without waiting for the
    /// broker.
    CallerEndsSilent,
    /// The caller sends `Disconnect` while the attempt is failing: a late refusing
    /// CONNACK, a late close, late garbage or a connect timeout of a few milliseconds.
    /// Both ends reach the group at about the same instant, and exactly one may win.
    DisconnectVersusFailure,
    /// The caller drops its last `Client` handle while the attempt is failing, as in
    /// `DisconnectVersusFailure`.
    DropVersusFailure,
    /// Every other kind except `KeepAliveExpired`, drawn at random per attempt, with 50
    /// clients at a time, so that the groups of different clients interleave.
    Mixed,
}

/// The kinds that `Kind::Mixed` draws from.
const MIXED_KINDS: [Kind; 12] = [
    Kind::Refused,
    Kind::CloseAtOnce,
    Kind::Garbage,
    Kind::ConnAckRefusedV3,
    Kind::ConnAckRefusedV5,
    Kind::Silent,
    Kind::LostAfterConnAck,
    Kind::DisconnectRace,
    Kind::DropWhileConnecting,
    Kind::CallerEndsSilent,
    Kind::DisconnectVersusFailure,
    Kind::DropVersusFailure,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::CloseAtOnce => "close at once",
            Self::Garbage => "garbage",
            Self::ConnAckRefusedV3 => "connack refused v3.1.1",
            Self::ConnAckRefusedV5 => "connack refused v5",
            Self::Silent => "silent",
            Self::DisconnectRace => "disconnect race",
            Self::DropWhileConnecting => "drop while connecting",
            Self::LostAfterConnAck => "lost after connack",
            Self::KeepAliveExpired => "keep-alive expired",
            Self::CallerEndsSilent => "caller ends silent attempt",
            Self::DisconnectVersusFailure => "disconnect versus failure",
            Self::DropVersusFailure => "drop versus failure",
            Self::Mixed => "mixed",
        }
    }

    /// Returns how many attempts to run and how many of them run at the same time.
    /// Kinds that wait for a connect timeout run in parallel to keep the file fast.
    fn attempts_and_parallelism(self) -> (usize, usize) {
        match self {
            Self::Refused
            | Self::CloseAtOnce
            | Self::ConnAckRefusedV3
            | Self::ConnAckRefusedV5
            | Self::DropWhileConnecting
            | Self::LostAfterConnAck
            | Self::CallerEndsSilent
            | Self::DisconnectVersusFailure
            | Self::DropVersusFailure => (1_000, 1),
            // Each attempt lasts two keep-alive intervals of 1 s, so fewer run, all at once.
            Self::KeepAliveExpired => (300, 100),
            Self::Mixed => (2_000, 50),
            Self::Garbage => (1_000, 20),
            Self::Silent => (1_000, 50),
            Self::DisconnectRace => (2_000, 1),
        }
    }

    /// Returns the seed of the kind's random choices. It is fixed, so every run plays the
    /// same plans, although the timing of parallel attempts still varies.
    fn seed(self) -> u64 {
        0x6d71_7474_6c69_6e6b ^ (self as u64)
    }
}

/// Everything one attempt needs: the broker's script, the client's settings, what the
/// caller does, and which outcome is correct.
#[derive(Debug, Clone)]
struct Plan {
    script: Script,
    protocol: ProtocolVersion,
    connect_timeout: Duration,
    keep_alive: Duration,
    action: Action,
    expected: Expected,
    /// The broker accepts with CONNACK before the failure, so `Connected` comes first.
    connects: bool,
}

/// What the caller does after starting the client.
#[derive(Debug, Clone, Copy)]
enum Action {
    /// Waits for the attempt to fail, then sends `Disconnect` to the stopped client.
    AwaitFailure,
    /// Waits `delay`, then sends `Disconnect`.
    Disconnect(Delay),
    /// Waits `delay`, then drops the last `Client` handle.
    Drop(Delay),
}

/// The error that the broker's script makes the attempt fail with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expected {
    /// `ConnectFailed` with an I/O error of kind `ConnectionRefused`.
    ConnectionRefused,
    /// `ConnectionClosed`, or `ConnectFailed` when the reset arrives while connecting.
    Closed,
    /// `ProtocolViolation`.
    Violation,
    /// `ProtocolViolation`, or `ConnectTimeout` when random bytes form the start of a
    /// valid packet and the client waits for the rest.
    ViolationOrTimeout,
    /// `ConnectRefused` with this reason.
    Refused(ConnectReason),
    /// `ConnectTimeout`.
    Timeout,
    /// `ConnectionClosed` by end of stream or an I/O error, after CONNACK.
    Lost,
    /// `ConnectionClosed` by a DISCONNECT from the broker with this reason.
    BrokerDisconnect(DisconnectReason),
    /// `KeepAliveTimeout`.
    KeepAlive,
    /// No error: nothing in the broker's script fails the attempt, so only the caller
    /// ends it.
    NoFailure,
}

/// Small deterministic random number generator (SplitMix64), so that a failing
/// iteration repeats with the same seed.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut mixed = self.0;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        mixed ^ (mixed >> 31)
    }

    /// Returns a number in `0..bound`; `bound` must not be zero.
    fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }

    /// Returns a delay of up to 64 yields, with a sleep of 0, 1 or 2 ms in a quarter
    /// of the cases, so that both sub-millisecond and timer-driven orders occur.
    fn delay(&mut self) -> Delay {
        let yields = self.below(65) as u32;
        let sleep = if self.below(4) == 0 {
            Duration::from_millis(self.below(3))
        } else {
            Duration::ZERO
        };
        Delay { yields, sleep }
    }
}

/// MQTT 3.1.1 CONNACK return codes that refuse, with the reason each maps to.
const V3_REFUSALS: [(u8, ConnectReason); 5] = [
    (1, ConnectReason::UnsupportedProtocolVersion),
    (2, ConnectReason::ClientIdentifierNotValid),
    (3, ConnectReason::ServerUnavailable),
    (4, ConnectReason::BadUserNameOrPassword),
    (5, ConnectReason::NotAuthorized),
];

/// MQTT 5 CONNACK reason codes that refuse.
const V5_REFUSALS: [ConnectReason; 13] = [
    ConnectReason::UnspecifiedError,
    ConnectReason::MalformedPacket,
    ConnectReason::ProtocolError,
    ConnectReason::UnsupportedProtocolVersion,
    ConnectReason::ClientIdentifierNotValid,
    ConnectReason::BadUserNameOrPassword,
    ConnectReason::NotAuthorized,
    ConnectReason::ServerUnavailable,
    ConnectReason::ServerBusy,
    ConnectReason::Banned,
    ConnectReason::UseAnotherServer,
    ConnectReason::ServerMoved,
    ConnectReason::ConnectionRateExceeded,
];

/// Fixed invalid replies to CONNECT, each with the protocol version of the client
/// that receives it.
fn invalid_replies() -> Vec<(ProtocolVersion, &'static [u8])> {
    vec![
        // Packet type 0 is reserved.
        (ProtocolVersion::V5, &[0x00, 0x00]),
        (ProtocolVersion::V3_1_1, &[0x00, 0x00]),
        // A v3.1.1 CONNACK has exactly two bytes after the fixed header.
        (ProtocolVersion::V3_1_1, &[0x20, 0x03, 0x00, 0x00, 0x00]),
        // A v5 CONNACK is at least three bytes long.
        (ProtocolVersion::V5, &[0x20, 0x01, 0x00]),
        // CONNACK flags other than session-present are reserved.
        (ProtocolVersion::V3_1_1, &[0x20, 0x02, 0x02, 0x00]),
        // 0x01 is not a CONNACK reason code in MQTT 5.
        (ProtocolVersion::V5, &[0x20, 0x03, 0x00, 0x01, 0x00]),
        // The first packet from the server must be CONNACK.
        (ProtocolVersion::V5, &[0x30, 0x04, 0x00, 0x01, b'a', 0x00]),
        (ProtocolVersion::V3_1_1, &[0xD0, 0x00]),
        // A remaining length longer than four bytes is malformed.
        (ProtocolVersion::V5, &[0x20, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]),
        // A server never sends CONNECT.
        (
            ProtocolVersion::V3_1_1,
            &[
                0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x00, 0x00, 0x00,
            ],
        ),
    ]
}

/// Returns the plan of attempt `iteration` of `kind`; `random` makes the choices that vary.
fn plan(kind: Kind, iteration: usize, random: &mut SplitMix64) -> Plan {
    let base = Plan {
        script: Script::Silent,
        protocol: ProtocolVersion::V5,
        connect_timeout: LONG_CONNECT_TIMEOUT,
        keep_alive: DEFAULT_KEEP_ALIVE,
        action: Action::AwaitFailure,
        expected: Expected::NoFailure,
        connects: false,
    };
    match kind {
        Kind::Refused => Plan {
            expected: Expected::ConnectionRefused,
            ..base
        },
        Kind::CloseAtOnce => Plan {
            script: Script::CloseAtOnce,
            expected: Expected::Closed,
            ..base
        },
        Kind::Garbage => garbage_plan(iteration, random, &base),
        Kind::ConnAckRefusedV3 => {
            let (code, reason) = V3_REFUSALS[iteration % V3_REFUSALS.len()];
            Plan {
                script: Script::reply(connack_v3(code)),
                protocol: ProtocolVersion::V3_1_1,
                expected: Expected::Refused(reason),
                ..base
            }
        }
        Kind::ConnAckRefusedV5 => {
            let reason = V5_REFUSALS[iteration % V5_REFUSALS.len()];
            Plan {
                script: Script::reply(connack_v5(reason.code())),
                expected: Expected::Refused(reason),
                ..base
            }
        }
        Kind::Silent => Plan {
            connect_timeout: SHORT_CONNECT_TIMEOUT,
            expected: Expected::Timeout,
            ..base
        },
        Kind::DisconnectRace => Plan {
            script: late_connack(random),
            action: Action::Disconnect(random.delay()),
            ..base
        },
        Kind::DropWhileConnecting => Plan {
            script: late_connack(random),
            action: Action::Drop(random.delay()),
            ..base
        },
        Kind::LostAfterConnAck => lost_after_connack_plan(iteration, &base),
        Kind::KeepAliveExpired => Plan {
            script: Script::reply(connack_v5(ConnectReason::Success.code())),
            keep_alive: Duration::from_secs(1),
            expected: Expected::KeepAlive,
            connects: true,
            ..base
        },
        Kind::CallerEndsSilent => {
            let delay = random.delay();
            Plan {
                connect_timeout: UNREACHED_CONNECT_TIMEOUT,
                action: if iteration % 2 == 0 {
                    Action::Disconnect(delay)
                } else {
                    Action::Drop(delay)
                },
                ..base
            }
        }
        Kind::DisconnectVersusFailure => Plan {
            action: Action::Disconnect(random.delay()),
            ..late_failure_plan(random, &base)
        },
        Kind::DropVersusFailure => Plan {
            action: Action::Drop(random.delay()),
            ..late_failure_plan(random, &base)
        },
        Kind::Mixed => {
            let kind = MIXED_KINDS[random.below(MIXED_KINDS.len() as u64) as usize];
            plan(kind, iteration, random)
        }
    }
}

/// Alternates the fixed invalid replies with random bytes of random length.
fn garbage_plan(iteration: usize, random: &mut SplitMix64, base: &Plan) -> Plan {
    let fixed = invalid_replies();
    if iteration % 2 == 0 {
        let (protocol, bytes) = fixed[(iteration / 2) % fixed.len()];
        return Plan {
            script: Script::reply(Bytes::from_static(bytes)),
            protocol,
            expected: Expected::Violation,
            ..base.clone()
        };
    }

    let len = 1 + random.below(256) as usize;
    Plan {
        script: Script::reply(random.bytes(len)),
        connect_timeout: SHORT_CONNECT_TIMEOUT,
        expected: Expected::ViolationOrTimeout,
        ..base.clone()
    }
}

/// Returns a script that accepts the connection with a CONNACK after a random delay.
fn late_connack(random: &mut SplitMix64) -> Script {
    Script::Reply {
        delay: random.delay(),
        bytes: connack_v5(ConnectReason::Success.code()),
    }
}

/// Cycles through the ways a connection can end right after a successful CONNACK: a
/// DISCONNECT from the broker (v5), a close (v5 and v3.1.1) and an invalid packet.
fn lost_after_connack_plan(iteration: usize, base: &Plan) -> Plan {
    let connack_then =
        |then: &[u8]| [&connack_v5(ConnectReason::Success.code())[..], then].concat();
    let base = Plan {
        connects: true,
        ..base.clone()
    };
    match iteration % 4 {
        0 => Plan {
            // DISCONNECT with reason Server shutting down and no properties.
            script: Script::reply(connack_then(&[0xE0, 0x02, 0x8B, 0x00])),
            expected: Expected::BrokerDisconnect(DisconnectReason::ServerShuttingDown),
            ..base
        },
        1 => Plan {
            script: Script::ReplyThenClose {
                delay: Delay::NONE,
                bytes: connack_v5(ConnectReason::Success.code()),
            },
            expected: Expected::Lost,
            ..base
        },
        2 => Plan {
            script: Script::ReplyThenClose {
                delay: Delay::NONE,
                bytes: connack_v3(0),
            },
            protocol: ProtocolVersion::V3_1_1,
            expected: Expected::Lost,
            ..base
        },
        _ => Plan {
            // Packet type 0 is reserved.
            script: Script::reply(connack_then(&[0x00, 0x00])),
            expected: Expected::Violation,
            ..base
        },
    }
}

/// Returns a plan whose attempt fails after a random delay of the same scale as the
/// caller's delays: a refusing CONNACK, a close, an invalid first byte, or a connect
/// timeout of 1 to 4 ms.
fn late_failure_plan(random: &mut SplitMix64, base: &Plan) -> Plan {
    let delay = random.delay();
    match random.below(4) {
        0 => {
            let reason = V5_REFUSALS[random.below(V5_REFUSALS.len() as u64) as usize];
            Plan {
                script: Script::Reply {
                    delay,
                    bytes: connack_v5(reason.code()),
                },
                expected: Expected::Refused(reason),
                ..base.clone()
            }
        }
        1 => Plan {
            script: Script::CloseAfterConnect { delay },
            expected: Expected::Closed,
            ..base.clone()
        },
        2 => Plan {
            script: Script::Reply {
                delay,
                bytes: Bytes::from_static(&[0x00, 0x00]),
            },
            expected: Expected::Violation,
            ..base.clone()
        },
        _ => Plan {
            connect_timeout: Duration::from_millis(1 + random.below(4)),
            expected: Expected::Timeout,
            ..base.clone()
        },
    }
}

/// What a kind left behind and how many attempts went wrong.
#[derive(Debug)]
struct KindSummary {
    kind: Kind,
    attempts: usize,
    baseline: Counts,
    settled: Counts,
    settle_error: Option<String>,
    broker: BrokerTotals,
    connected: usize,
    failed: usize,
    requested: usize,
    wrong_outcomes: usize,
    kept_failures: Vec<String>,
}

impl KindSummary {
    fn is_clean(&self) -> bool {
        self.settle_error.is_none() && self.wrong_outcomes == 0
    }
}

impl fmt::Display for KindSummary {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "{}: {} attempts, actors {} -> {}, tasks {} -> {}, fds {} -> {}, \
             heap allocations {} -> {}, broker accepted {} read {} replied {}, \
             connected {}, failed {}, requested {}, wrong outcomes {}",
            self.kind.name(),
            self.attempts,
            self.baseline.actors,
            self.settled.actors,
            self.baseline.tasks,
            self.settled.tasks,
            self.baseline.fds,
            self.settled.fds,
            self.baseline.allocations,
            self.settled.allocations,
            self.broker.accepted,
            self.broker.connects_read,
            self.broker.replies_written,
            self.connected,
            self.failed,
            self.requested,
            self.wrong_outcomes,
        )?;
        if let Some(error) = &self.settle_error {
            write!(formatter, "\n  {error}")?;
        }
        for failure in &self.kept_failures {
            write!(formatter, "\n  {failure}")?;
        }
        Ok(())
    }
}

/// Broker activity summed over a kind's attempts, to show that each fault was played.
#[derive(Debug, Clone, Copy, Default)]
struct BrokerTotals {
    accepted: usize,
    connects_read: usize,
    replies_written: usize,
}

impl BrokerTotals {
    fn add(&mut self, report: BrokerReport) {
        self.accepted += report.accepted;
        self.connects_read += report.connects_read;
        self.replies_written += report.replies_written;
    }
}

/// Runs the warm-up and the measured attempts of `kind` and returns what they left.
async fn run_kind(kind: Kind) -> KindSummary {
    let (planned_attempts, parallelism) = kind.attempts_and_parallelism();

    // The warm-up may grow caches, so only the exact counts are compared for it.
    let before_warm_up = Counts::now();
    let mut warm_up_random = SplitMix64(!kind.seed());
    let warm_up = run_attempts(kind, WARM_UP_ATTEMPTS, parallelism, &mut warm_up_random).await;
    let warm_up_settled = await_settled(before_warm_up, Heap::Ignore).await;

    let baseline = Counts::now();
    let mut random = SplitMix64(kind.seed());
    let run = run_attempts(kind, planned_attempts, parallelism, &mut random).await;
    let settled = await_settled(baseline, Heap::NoGrowth).await;

    let settle_error = match (&warm_up_settled, &settled) {
        (Err(left), _) => Some(format!(
            "warm-up counts did not return to {before_warm_up:?} within {SETTLE_BOUND:?}: {left:?}"
        )),
        (Ok(_), Err(left)) => Some(format!(
            "counts did not return to baseline within {SETTLE_BOUND:?}: {left:?}"
        )),
        (Ok(_), Ok(_)) => None,
    };
    let failures: Vec<String> = warm_up
        .failures
        .iter()
        .map(|failure| format!("warm-up {failure}"))
        .chain(run.failures)
        .collect();
    KindSummary {
        kind,
        attempts: run.attempts,
        baseline,
        settled: settled.unwrap_or_else(|left| left),
        settle_error,
        broker: run.broker,
        connected: run.connected,
        failed: run.failed,
        requested: run.requested,
        wrong_outcomes: failures.len(),
        kept_failures: failures.into_iter().take(KEPT_FAILURES).collect(),
    }
}

/// The result of a series of attempts of one kind.
#[derive(Debug, Default)]
struct Run {
    /// Attempts that ran, fewer than planned when the series ended early.
    attempts: usize,
    broker: BrokerTotals,
    /// Attempts in which the client reported `Connected` before it stopped.
    connected: usize,
    /// Attempts that ended with a failure rather than by the caller.
    failed: usize,
    /// Attempts whose end the client reported with the cause `Requested`.
    requested: usize,
    failures: Vec<String>,
}

/// What one attempt produced.
#[derive(Debug)]
struct Attempt {
    broker: BrokerReport,
    observed: Observed,
    /// The first wrong thing the attempt showed, if any.
    failure: Option<String>,
    /// `true` when the client hung or kept a connection open. Each such attempt costs
    /// seconds of waiting, and the next ones would likely do the same, so the series ends.
    ends_series: bool,
}

/// Runs `attempts` attempts of `kind` in batches of `parallelism`, stopping early after
/// an attempt that hung or kept its connection open.
async fn run_attempts(
    kind: Kind,
    attempts: usize,
    parallelism: usize,
    random: &mut SplitMix64,
) -> Run {
    let mut run = Run::default();
    let mut next_iteration = 0;
    while next_iteration < attempts {
        let batch_end = attempts.min(next_iteration + parallelism);
        let mut running = JoinSet::new();
        for iteration in next_iteration..batch_end {
            let plan = plan(kind, iteration, random);
            running.spawn_local(async move { (iteration, run_attempt(iteration, plan).await) });
        }
        next_iteration = batch_end;

        let mut ends_series = false;
        while let Some(joined) = running.join_next().await {
            let (iteration, attempt) = joined.unwrap();
            run.attempts += 1;
            run.broker.add(attempt.broker);
            run.connected += usize::from(attempt.observed.connected);
            run.failed += usize::from(attempt.observed.failed);
            run.requested += usize::from(attempt.observed.requested);
            if let Some(failure) = attempt.failure {
                run.failures
                    .push(format!("iteration {iteration}: {failure}"));
            }
            ends_series |= attempt.ends_series;
        }
        if ends_series {
            break;
        }
    }
    run
}

/// What a client connects to in one attempt.
#[derive(Debug)]
enum Peer {
    Closed(ClosedPort),
    Broker(FaultBroker),
}

/// Runs one attempt with its own broker, bounded by `ATTEMPT_BOUND`, and checks the
/// caller's view and the broker's view of it.
async fn run_attempt(iteration: usize, plan: Plan) -> Attempt {
    // A refused attempt needs a port without a listener, so it gets no broker.
    let peer = if plan.expected == Expected::ConnectionRefused {
        Peer::Closed(ClosedPort::bind().unwrap())
    } else {
        let script = plan.script.clone();
        Peer::Broker(FaultBroker::start(move |_| script.clone()).await.unwrap())
    };
    let port = match &peer {
        Peer::Closed(closed) => closed.port(),
        Peer::Broker(broker) => broker.port(),
    };

    let Ok(outcome) =
        tokio::time::timeout(ATTEMPT_BOUND, drive_client(port, iteration, &plan)).await
    else {
        return Attempt {
            broker: BrokerReport::default(),
            observed: Observed::default(),
            failure: Some(format!(
                "attempt did not end within {ATTEMPT_BOUND:?}: {plan:?}"
            )),
            ends_series: true,
        };
    };

    let report = match peer {
        Peer::Closed(_) => BrokerReport::default(),
        Peer::Broker(broker) => broker.stop().await,
    };
    let lingering = (report.lingering > 0).then(|| {
        format!(
            "client kept its connection open after it stopped, for {:?}: {plan:?}",
            fault_broker::STOP_GRACE
        )
    });
    Attempt {
        broker: report,
        observed: outcome.as_ref().copied().unwrap_or_default(),
        ends_series: lingering.is_some(),
        failure: outcome.err().or(lingering),
    }
}

/// What the caller observed of one attempt that went as expected.
#[derive(Debug, Clone, Copy, Default)]
struct Observed {
    /// The client reported `Connected`.
    connected: bool,
    /// The client reported `Disconnected` with a failure as the cause.
    failed: bool,
    /// The client reported `Disconnected` with the cause `Requested`.
    requested: bool,
}

/// Starts a client against `port`, queues one QoS 1 publish, plays the plan's action
/// and checks the results and events the caller receives, up to the client releasing
/// its event recipient.
async fn drive_client(port: u16, iteration: usize, plan: &Plan) -> Result<Observed, String> {
    let options = ClientOptions::new("127.0.0.1", port)
        .client_id(&format!("group-lifecycle-{iteration}"))
        .protocol(plan.protocol)
        .connect_timeout(plan.connect_timeout)
        .keep_alive(plan.keep_alive)
        .disconnect_timeout(DISCONNECT_TIMEOUT)
        .reconnect(false);
    let (sink, mut events) = EventSink::start_with_channel();
    let client = options
        .start()
        .map_err(|error| format!("start failed: {error}"))?;
    client.subscribe_events(sink.recipient());
    // The broker never acknowledges it, so the publish must end with the attempt's end.
    // `try_publish` returns a future that contains no handle, so dropping the client still
    // drops its last handle.
    let topic = TopicName::try_from("group-lifecycle/probe").unwrap();
    let publish = client
        .try_publish(Publish::new(topic, "probe").qos(QoS::AtLeastOnce))
        .map_err(|error| format!("try_publish failed at once: {error:?} with {plan:?}"))?;

    let mut observed = Observed::default();
    let disconnect_result = match plan.action {
        Action::AwaitFailure => {
            if plan.connects {
                match events.recv().await {
                    Some(Event::Connected { .. }) => observed.connected = true,
                    other => {
                        return Err(format!("expected Connected, got {other:?} with {plan:?}"))
                    }
                }
            }
            let cause = next_disconnected(&mut events).await?;
            check_failure(plan, &cause)?;
            observed.failed = true;
            Some(client.disconnect(Disconnect::new()).await)
        }
        Action::Disconnect(delay) => {
            delay.wait().await;
            Some(client.disconnect(Disconnect::new()).await)
        }
        Action::Drop(delay) => {
            delay.wait().await;
            None
        }
    };
    drop(client);
    // `Client::disconnect` returns `Ok` also when the client had stopped already.
    if let Some(Err(error)) = disconnect_result {
        return Err(format!(
            "disconnect returned {error:?} ({error}) with {plan:?}"
        ));
    }
    check_publish(plan, &publish.await)?;

    // The client must release the recipient once it has stopped, which closes the channel.
    let mut rest = Vec::new();
    while let Some(event) = events.recv().await {
        rest.push(event);
    }
    check_trailing_events(plan, &rest)?;
    for event in &rest {
        match event {
            Event::Connected { .. } => observed.connected = true,
            Event::Disconnected {
                reason: DisconnectCause::Failed(_),
            } => observed.failed = true,
            Event::Disconnected {
                reason: DisconnectCause::Requested,
            } => observed.requested = true,
            _ => {}
        }
    }
    Ok(observed)
}

/// Checks the result of the probe publish. The broker never acknowledges it, so it
/// fails with the attempt's failure, or with `Stopped` when the caller ended the client.
fn check_publish(plan: &Plan, result: &Result<PublishOutcome, ClientError>) -> Result<(), String> {
    let valid = match (plan.action, result) {
        (_, Err(error)) if error_matches(plan.expected, error) => true,
        (Action::Disconnect(_) | Action::Drop(_), Err(ClientError::Stopped)) => true,
        _ => false,
    };
    if valid {
        Ok(())
    } else {
        Err(format!("publish returned {result:?} with {plan:?}"))
    }
}

/// Returns the cause of the first event, which must be `Disconnected`.
async fn next_disconnected(
    events: &mut mpsc::UnboundedReceiver<Event>,
) -> Result<DisconnectCause, String> {
    match events.recv().await {
        Some(Event::Disconnected { reason }) => Ok(reason),
        Some(other) => Err(format!("expected a Disconnected event, got {other:?}")),
        None => Err("event stream ended without a Disconnected event".to_owned()),
    }
}

/// Checks the cause of a failed attempt against the plan's expected error.
fn check_failure(plan: &Plan, cause: &DisconnectCause) -> Result<(), String> {
    let matches = match cause {
        DisconnectCause::Failed(error) => error_matches(plan.expected, error),
        _ => false,
    };
    if matches {
        Ok(())
    } else {
        Err(format!(
            "expected {:?}, got {cause:?} ({cause}) with {plan:?}",
            plan.expected
        ))
    }
}

fn error_matches(expected: Expected, error: &ClientError) -> bool {
    match (expected, error) {
        (Expected::ConnectionRefused, ClientError::ConnectFailed { source: io, .. }) => {
            io.kind() == io::ErrorKind::ConnectionRefused
        }
        (
            Expected::Closed,
            ClientError::ConnectionClosed(..) | ClientError::ConnectFailed { .. },
        )
        | (
            Expected::Violation | Expected::ViolationOrTimeout,
            ClientError::ProtocolViolation(..),
        )
        | (Expected::ViolationOrTimeout | Expected::Timeout, ClientError::ConnectTimeout)
        | (
            Expected::Lost,
            ClientError::ConnectionClosed(ClosedBy::EndOfStream | ClosedBy::Io(_)),
        )
        | (Expected::KeepAlive, ClientError::KeepAliveTimeout) => true,
        (
            Expected::BrokerDisconnect(expected),
            ClientError::ConnectionClosed(ClosedBy::Broker { reason, .. }),
        ) => *reason == expected,
        (Expected::Refused(expected), ClientError::ConnectRefused { reason, .. }) => {
            *reason == expected
        }
        _ => false,
    }
}

/// Checks the events that arrived after the first failure, or all events when the
/// caller ended the attempt.
///
/// A failed attempt reports nothing more, because reconnect is off. Otherwise the events
/// are at most one `Connected`, which only a successful CONNACK allows, then at most one
/// `Disconnected`, whose cause is `Requested` or the failure the broker's script causes.
/// An attempt ended by `Disconnect` must report its end. One ended by dropping the
/// client may not, because the supervisor stops with its last handle.
fn check_trailing_events(plan: &Plan, events: &[Event]) -> Result<(), String> {
    let (connected, end) = match events {
        [] => (false, None),
        [Event::Connected { .. }] => (true, None),
        [Event::Disconnected { reason }] => (false, Some(reason)),
        [Event::Connected { .. }, Event::Disconnected { reason }] => (true, Some(reason)),
        _ => return Err(format!("unexpected events {events:?} with {plan:?}")),
    };
    let connect_allowed = plan.expected == Expected::NoFailure || plan.connects;
    let end_allowed = |cause: &DisconnectCause| match cause {
        DisconnectCause::Requested => true,
        DisconnectCause::Failed(error) => error_matches(plan.expected, error),
        _ => false,
    };

    let valid = match plan.action {
        Action::AwaitFailure => events.is_empty(),
        Action::Disconnect(_) => (!connected || connect_allowed) && end.is_some_and(end_allowed),
        Action::Drop(_) => (!connected || connect_allowed) && end.map_or(true, end_allowed),
    };
    if valid {
        Ok(())
    } else {
        Err(format!("unexpected events {events:?} with {plan:?}"))
    }
}

/// Actor that forwards client events into a channel. The channel closes when the
/// client drops its last recipient, which tells a test that the client has stopped.
#[derive(Debug)]
struct EventSink {
    sender: mpsc::UnboundedSender<Event>,
}

impl EventSink {
    fn start_with_channel() -> (Addr<Self>, mpsc::UnboundedReceiver<Event>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        (Self { sender }.start(), receiver)
    }
}

impl Actor for EventSink {
    type Context = Context<Self>;
}

impl Handler<Event> for EventSink {
    type Result = ();

    fn handle(&mut self, event: Event, _: &mut Context<Self>) {
        // The receiver is gone only after the attempt's check ended, so nothing is lost.
        let _ = self.sender.send(event);
    }
}

/// Process-wide and runtime-wide counts that a stopped client must not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    /// Live mqttlink actors in the process.
    actors: usize,
    /// Alive tasks of the tokio runtime, which excludes actix's local tasks.
    tasks: usize,
    /// Open file descriptors of the process.
    fds: usize,
    /// Heap allocations not yet freed, in the whole process.
    allocations: usize,
}

/// Whether `await_settled` compares the heap allocations with the baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Heap {
    Ignore,
    NoGrowth,
}

impl Counts {
    fn now() -> Self {
        let stats = ALLOCATOR.stats();
        Self {
            actors: live_actor_count(),
            tasks: tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks(),
            fds: std::fs::read_dir("/proc/self/fd").unwrap().count(),
            allocations: stats.allocations.saturating_sub(stats.deallocations),
        }
    }

    fn has_settled_to(&self, baseline: &Self, heap: Heap) -> bool {
        let heap_settled = match heap {
            Heap::Ignore => true,
            Heap::NoGrowth => self.allocations <= baseline.allocations + HEAP_SLACK,
        };
        self.actors == baseline.actors
            && self.tasks == baseline.tasks
            && self.fds == baseline.fds
            && heap_settled
    }
}

/// Waits until the counts have returned to `baseline`, for at most `SETTLE_BOUND`.
/// Actors stop asynchronously, so this first yields to let their last steps run, then
/// polls every millisecond. Returns the last counts seen, as the error when they never
/// settled.
async fn await_settled(baseline: Counts, heap: Heap) -> Result<Counts, Counts> {
    let deadline = tokio::time::Instant::now() + SETTLE_BOUND;
    for round in 0_u32.. {
        let counts = Counts::now();
        if counts.has_settled_to(&baseline, heap) {
            return Ok(counts);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(counts);
        }
        if round < 1_000 {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    Err(Counts::now())
}
