//! The reconnect policy: after a connection ends, decides whether to connect again, to
//! which server and after how long.
//!
//! [`ReconnectPolicy`] is sans-IO like the session. It uses no actix, tokio, clock or
//! entropy source: time arrives as `now`, and the jitter comes from a generator seeded by
//! the caller, so the same seed and inputs give the same delays. Call
//! [`ReconnectPolicy::handle_connected`] when CONNACK accepts a connection and
//! [`ReconnectPolicy::handle_down`] when the connection ends. The caller acts on the
//! returned [`Decision`] and reads [`ReconnectPolicy::server`] for the next attempt.

use std::time::{Duration, Instant};

use crate::codec::{ConnectReason, DisconnectReason};
use crate::error::{ClientError, ClosedBy, DisconnectCause};
use crate::transport::Endpoint;

/// Largest exponent of the backoff ceiling; `base * 2^32` exceeds any useful maximum.
const MAX_EXPONENT: u32 = 32;

/// The settings of a [`ReconnectPolicy`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconnectConfig {
    /// Servers tried in turn; the first is tried first. Must not be empty.
    pub servers: Vec<Endpoint>,
    /// Ceiling of the first delay; the ceiling doubles after every failed attempt.
    pub backoff_base: Duration,
    /// Largest delay between two attempts.
    pub backoff_max: Duration,
    /// Time a connection must stay up for the backoff to start again from `backoff_base`.
    pub reset_after: Duration,
}

/// Reconnect settings of a client, built from [`ClientOptions`](crate::ClientOptions)
/// when reconnect is on.
#[derive(Debug, Clone)]
pub(crate) struct ReconnectSettings {
    /// Servers, backoff bounds and reset time.
    pub policy: ReconnectConfig,
    /// Whether every attempt after the first accepted connection requests to resume the
    /// session (clean start 0).
    pub resume_on_reconnect: bool,
    /// Whether granted subscriptions are sent again when a reconnect finds no session.
    pub resubscribe: bool,
}

/// The kind of response a connection's end calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Do not connect again: the application asked to leave, or another attempt would
    /// be refused in the same way (bad credentials, not authorized, banned).
    Stop,
    /// Connect again after a backoff delay.
    Retry,
    /// The broker named another server (v5 Use Another Server or Server Moved). Connect
    /// to the server in its Server Reference next, or back off when it gave none.
    Redirect,
}

/// The caller's next step after a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Stop for good and fail the waiting callers.
    Stop,
    /// Wait `delay`, then connect to `server`.
    Retry {
        /// Wait before the next attempt.
        delay: Duration,
        /// Server of the next attempt, also returned by [`ReconnectPolicy::server`].
        server: Endpoint,
        /// Number of this attempt since the last reset, starting at 1.
        attempt: u32,
    },
}

/// State of the current attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A connection attempt runs and has not reached CONNACK.
    AwaitingConnAck,
    /// CONNACK accepted the connection at `since`.
    Connected { since: Instant },
}

/// Exponential backoff with full jitter, a failover list and broker redirects; see the
/// module docs.
#[derive(Debug, Clone)]
pub struct ReconnectPolicy {
    config: ReconnectConfig,
    /// Index into `config.servers` of the server tried when no redirect is pending.
    current: usize,
    /// Server named by the broker, tried once by the next attempt.
    redirect: Option<Endpoint>,
    /// Failed attempts since the last reset; the exponent of the next ceiling.
    failures: u32,
    state: State,
    random: SplitMix64,
}

impl ReconnectPolicy {
    /// Creates a policy whose first attempt goes to the first server; `seed` starts the
    /// jitter generator.
    #[must_use]
    pub fn new(config: ReconnectConfig, seed: u64) -> Self {
        Self {
            config,
            current: 0,
            redirect: None,
            failures: 0,
            state: State::AwaitingConnAck,
            random: SplitMix64(seed),
        }
    }

    /// Returns the server of the current or next attempt, or `None` when the list of
    /// servers is empty.
    #[must_use]
    pub fn server(&self) -> Option<&Endpoint> {
        self.redirect
            .as_ref()
            .or_else(|| self.config.servers.get(self.current))
    }

    /// Returns the number of failed attempts since the last reset.
    #[must_use]
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Records that CONNACK accepted the connection at `now`.
    pub fn handle_connected(&mut self, now: Instant) {
        self.state = State::Connected { since: now };
    }

    /// Decides what follows the end of the connection or attempt, at `now`.
    ///
    /// `server_reference` is the Server Reference property (v5) that came with the
    /// CONNACK or DISCONNECT, if any. A connection that stayed up for `reset_after`
    /// resets the backoff. A connection that reached CONNACK is retried on the same
    /// server first; a failed attempt moves on to the next server in the list.
    pub fn handle_down(
        &mut self,
        cause: &DisconnectCause,
        server_reference: Option<&str>,
        now: Instant,
    ) -> Decision {
        let action = classify(cause);
        let was_connected = match self.state {
            State::Connected { since } => {
                if now.saturating_duration_since(since) >= self.config.reset_after {
                    self.failures = 0;
                }
                true
            }
            State::AwaitingConnAck => false,
        };
        self.state = State::AwaitingConnAck;

        let previous_server = self.server().cloned();
        self.redirect = None;
        match action {
            Action::Stop => return Decision::Stop,
            Action::Redirect => {
                let default_port = previous_server.as_ref().map_or(1883, |server| server.port);
                self.redirect = server_reference
                    .and_then(|reference| parse_server_reference(reference, default_port));
            }
            Action::Retry => {}
        }
        if self.redirect.is_none() && !was_connected {
            self.advance_server();
        }

        let Some(server) = self.server().cloned() else {
            return Decision::Stop;
        };
        let delay = self.next_delay();
        Decision::Retry {
            delay,
            server,
            attempt: self.failures,
        }
    }

    /// Returns the ceiling of the next delay: `min(backoff_max, backoff_base * 2^failures)`.
    #[must_use]
    pub fn ceiling(&self) -> Duration {
        let factor = 1_u32 << self.failures.min(MAX_EXPONENT - 1);
        self.config
            .backoff_base
            .checked_mul(factor)
            .map_or(self.config.backoff_max, |ceiling| {
                ceiling.min(self.config.backoff_max)
            })
    }

    /// Draws a delay in `[0, ceiling]` with full jitter and counts one more failure.
    fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        let span = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        let nanos = match span.checked_add(1) {
            Some(bound) => self.random.next() % bound,
            None => self.random.next(),
        };
        Duration::from_nanos(nanos)
    }

    fn advance_server(&mut self) {
        let count = self.config.servers.len().max(1);
        self.current = (self.current + 1) % count;
    }
}

/// Returns what the end of a connection with `cause` calls for.
#[must_use]
pub fn classify(cause: &DisconnectCause) -> Action {
    match cause {
        DisconnectCause::Requested => Action::Stop,
        DisconnectCause::Failed(error) => classify_error(error),
    }
}

fn classify_error(error: &ClientError) -> Action {
    match error {
        ClientError::ConnectFailed { .. }
        | ClientError::ConnectTimeout
        | ClientError::KeepAliveTimeout
        | ClientError::ProtocolViolation(_) => Action::Retry,
        ClientError::ConnectRefused { reason, .. } => classify_refusal(*reason),
        ClientError::ConnectionClosed(closed) => classify_close(closed),
        // The remaining errors belong to single requests or to a client that stopped on
        // purpose; none of them describes a connection that could come back.
        ClientError::InvalidOptions(_)
        | ClientError::NotConnected
        | ClientError::QueueFull
        | ClientError::TooLargeForQueue { .. }
        | ClientError::DroppedFromQueue
        | ClientError::Expired { .. }
        | ClientError::PacketTooLarge { .. }
        | ClientError::Rejected { .. }
        | ClientError::InvalidRequest(_)
        | ClientError::Stopped => Action::Stop,
    }
}

/// Classifies a CONNACK failure code (3.1.1 return codes arrive mapped onto these).
fn classify_refusal(reason: ConnectReason) -> Action {
    match reason {
        ConnectReason::ServerUnavailable
        | ConnectReason::ServerBusy
        | ConnectReason::QuotaExceeded
        | ConnectReason::ConnectionRateExceeded
        | ConnectReason::UnspecifiedError
        | ConnectReason::ImplementationSpecificError => Action::Retry,
        ConnectReason::UseAnotherServer | ConnectReason::ServerMoved => Action::Redirect,
        // Credentials, identity and the CONNECT packet itself would be refused again:
        // bad user name or password, not authorized, banned, client identifier not
        // valid, unsupported protocol version, and the codes about a CONNECT or will
        // the broker cannot accept.
        _ => Action::Stop,
    }
}

fn classify_close(closed: &ClosedBy) -> Action {
    match closed {
        ClosedBy::EndOfStream | ClosedBy::Io(_) => Action::Retry,
        ClosedBy::Broker { reason, .. } => match reason {
            DisconnectReason::UseAnotherServer | DisconnectReason::ServerMoved => Action::Redirect,
            // Another connection with the same client identifier took the session. A
            // retry would take it back, and the two clients would keep closing each
            // other's connection.
            DisconnectReason::SessionTakenOver => Action::Stop,
            _ => Action::Retry,
        },
        // A packet this client cannot encode would fail the same way on every connection.
        ClosedBy::EncodeFailed(_) => Action::Stop,
    }
}

/// Parses the first entry of a Server Reference as `host`, `host:port` or `[ipv6]:port`.
///
/// MQTT 5.0 leaves the format to the implementation (section 4.11); this accepts the
/// common one, a space-separated list of `host[:port]`, and takes the first entry.
#[must_use]
pub fn parse_server_reference(reference: &str, default_port: u16) -> Option<Endpoint> {
    let entry = reference.split_whitespace().next()?;
    let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        match after.strip_prefix(':') {
            Some(port) => (host, port.parse().ok()?),
            None if after.is_empty() => (host, default_port),
            None => return None,
        }
    } else {
        match entry.split_once(':') {
            Some((host, port)) if !port.contains(':') => (host, port.parse().ok()?),
            Some(_) => return None,
            None => (entry, default_port),
        }
    };
    if host.is_empty() {
        return None;
    }
    Some(Endpoint {
        host: host.to_owned(),
        port,
    })
}

/// The SplitMix64 generator: small, fast and good enough for jitter, not for secrets.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests {
    use std::io;
    use std::sync::Arc;

    use super::*;

    const BASE: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(3);
    const RESET: Duration = Duration::from_secs(10);

    fn server(host: &str, port: u16) -> Endpoint {
        Endpoint {
            host: host.to_owned(),
            port,
        }
    }

    fn policy(servers: &[Endpoint], seed: u64) -> ReconnectPolicy {
        let config = ReconnectConfig {
            servers: servers.to_vec(),
            backoff_base: BASE,
            backoff_max: MAX,
            reset_after: RESET,
        };
        ReconnectPolicy::new(config, seed)
    }

    fn lost() -> DisconnectCause {
        DisconnectCause::Failed(ClientError::ConnectionClosed(ClosedBy::EndOfStream))
    }

    fn refused(reason: ConnectReason) -> DisconnectCause {
        DisconnectCause::Failed(ClientError::ConnectRefused {
            reason,
            reason_string: None,
            server_reference: None,
        })
    }

    fn broker_disconnect(reason: DisconnectReason) -> DisconnectCause {
        DisconnectCause::Failed(ClientError::ConnectionClosed(ClosedBy::Broker {
            reason,
            reason_string: None,
            server_reference: None,
        }))
    }

    fn retry_delay(decision: &Decision) -> Duration {
        match decision {
            Decision::Retry { delay, .. } => *delay,
            Decision::Stop => panic!("expected a retry, got stop"),
        }
    }

    #[test]
    fn delays_stay_within_doubling_ceiling() {
        let now = Instant::now();
        for seed in 0..50 {
            let mut policy = policy(&[server("a", 1)], seed);
            for failures in 0..12_u32 {
                let ceiling = MAX.min(BASE * 2_u32.pow(failures));
                assert_eq!(policy.ceiling(), ceiling, "ceiling after {failures}");
                let delay = retry_delay(&policy.handle_down(&lost(), None, now));
                assert!(delay <= ceiling, "{delay:?} above {ceiling:?}");
            }
            assert_eq!(policy.ceiling(), MAX);
        }
    }

    #[test]
    fn delays_are_jittered_and_seeded() {
        let now = Instant::now();
        let draw = |seed| {
            let mut policy = policy(&[server("a", 1)], seed);
            (0..8)
                .map(|_| retry_delay(&policy.handle_down(&lost(), None, now)))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7), "same seed, same delays");
        assert_ne!(draw(7), draw(8), "other seed, other delays");

        // Full jitter spreads the delays over the whole range, down to near zero.
        let mut policy = policy(&[server("a", 1)], 1);
        for _ in 0..6 {
            policy.handle_down(&lost(), None, now);
        }
        let delays: Vec<Duration> = (0..200)
            .map(|_| retry_delay(&policy.handle_down(&lost(), None, now)))
            .collect();
        assert!(delays.iter().any(|delay| *delay < MAX / 4));
        assert!(delays.iter().any(|delay| *delay > MAX * 3 / 4));
    }

    #[test]
    fn huge_ceiling_saturates_at_max() {
        let config = ReconnectConfig {
            servers: vec![server("a", 1)],
            backoff_base: Duration::from_secs(u64::MAX / 4),
            backoff_max: Duration::MAX,
            reset_after: RESET,
        };
        let mut policy = ReconnectPolicy::new(config, 3);
        for _ in 0..40 {
            policy.handle_down(&lost(), None, Instant::now());
        }
        assert_eq!(policy.ceiling(), Duration::MAX);
    }

    #[test]
    fn stable_connection_resets_backoff() {
        let start = Instant::now();
        let mut policy = policy(&[server("a", 1)], 5);
        for _ in 0..4 {
            policy.handle_down(&lost(), None, start);
        }
        assert_eq!(policy.failures(), 4);

        // Up for less than `reset_after`: the backoff keeps growing.
        policy.handle_connected(start);
        policy.handle_down(&lost(), None, start + RESET / 2);
        assert_eq!(policy.failures(), 5);

        // Up for `reset_after`: the next delay is drawn from the first ceiling again.
        policy.handle_connected(start);
        let decision = policy.handle_down(&lost(), None, start + RESET);
        assert!(retry_delay(&decision) <= BASE);
        assert_eq!(policy.failures(), 1);
    }

    #[test]
    fn each_cause_has_its_action() {
        let io = Arc::new(io::Error::from(io::ErrorKind::ConnectionRefused));
        let cases = [
            (DisconnectCause::Requested, Action::Stop),
            (
                DisconnectCause::Failed(ClientError::ConnectFailed {
                    endpoint: Endpoint {
                        host: "127.0.0.1".to_owned(),
                        port: 1883,
                    },
                    source: Arc::clone(&io),
                }),
                Action::Retry,
            ),
            (
                DisconnectCause::Failed(ClientError::ConnectTimeout),
                Action::Retry,
            ),
            (
                DisconnectCause::Failed(ClientError::KeepAliveTimeout),
                Action::Retry,
            ),
            (
                DisconnectCause::Failed(ClientError::ProtocolViolation(
                    crate::session::ProtocolViolation::SecondConnAck,
                )),
                Action::Retry,
            ),
            (lost(), Action::Retry),
            (
                DisconnectCause::Failed(ClientError::ConnectionClosed(ClosedBy::Io(io))),
                Action::Retry,
            ),
            (
                broker_disconnect(DisconnectReason::ServerShuttingDown),
                Action::Retry,
            ),
            (
                broker_disconnect(DisconnectReason::ServerMoved),
                Action::Redirect,
            ),
            (
                broker_disconnect(DisconnectReason::UseAnotherServer),
                Action::Redirect,
            ),
            (
                broker_disconnect(DisconnectReason::SessionTakenOver),
                Action::Stop,
            ),
            (
                DisconnectCause::Failed(ClientError::ConnectionClosed(ClosedBy::EncodeFailed(
                    "bug".to_owned(),
                ))),
                Action::Stop,
            ),
            (DisconnectCause::Failed(ClientError::Stopped), Action::Stop),
        ];
        for (cause, action) in cases {
            assert_eq!(classify(&cause), action, "{cause:?}");
        }
    }

    #[test]
    fn each_refusal_code_has_its_action() {
        let cases = [
            (ConnectReason::BadUserNameOrPassword, Action::Stop),
            (ConnectReason::NotAuthorized, Action::Stop),
            (ConnectReason::Banned, Action::Stop),
            (ConnectReason::ClientIdentifierNotValid, Action::Stop),
            (ConnectReason::UnsupportedProtocolVersion, Action::Stop),
            (ConnectReason::BadAuthenticationMethod, Action::Stop),
            (ConnectReason::MalformedPacket, Action::Stop),
            (ConnectReason::ServerBusy, Action::Retry),
            (ConnectReason::ServerUnavailable, Action::Retry),
            (ConnectReason::QuotaExceeded, Action::Retry),
            (ConnectReason::ConnectionRateExceeded, Action::Retry),
            (ConnectReason::UseAnotherServer, Action::Redirect),
            (ConnectReason::ServerMoved, Action::Redirect),
        ];
        for (reason, action) in cases {
            assert_eq!(classify(&refused(reason)), action, "{reason:?}");
        }
    }

    #[test]
    fn fatal_refusal_stops_policy() {
        let mut policy = policy(&[server("a", 1)], 1);
        let decision =
            policy.handle_down(&refused(ConnectReason::NotAuthorized), None, Instant::now());
        assert_eq!(decision, Decision::Stop);
        let decision = policy.handle_down(&DisconnectCause::Requested, None, Instant::now());
        assert_eq!(decision, Decision::Stop);
    }

    #[test]
    fn failed_attempts_rotate_through_servers() {
        let servers = [server("a", 1), server("b", 2), server("c", 3)];
        let mut policy = policy(&servers, 1);
        let now = Instant::now();
        assert_eq!(policy.server(), Some(&servers[0]));

        let mut tried = Vec::new();
        for _ in 0..4 {
            match policy.handle_down(&lost(), None, now) {
                Decision::Retry { server, .. } => tried.push(server.host),
                Decision::Stop => panic!("stopped"),
            }
        }
        assert_eq!(tried, ["b", "c", "a", "b"]);
    }

    #[test]
    fn lost_connection_retries_same_server_first() {
        let servers = [server("a", 1), server("b", 2)];
        let mut policy = policy(&servers, 1);
        let now = Instant::now();
        policy.handle_down(&lost(), None, now);
        assert_eq!(policy.server(), Some(&servers[1]));

        policy.handle_connected(now);
        match policy.handle_down(&lost(), None, now) {
            Decision::Retry { server, .. } => assert_eq!(server, servers[1]),
            Decision::Stop => panic!("stopped"),
        }
        policy.handle_down(&lost(), None, now);
        assert_eq!(policy.server(), Some(&servers[0]));
    }

    #[test]
    fn redirect_tries_referenced_server_once() {
        let servers = [server("a", 1883), server("b", 1883)];
        let mut policy = policy(&servers, 1);
        let now = Instant::now();

        let decision = policy.handle_down(
            &refused(ConnectReason::UseAnotherServer),
            Some("other.example:1884 spare.example"),
            now,
        );
        match decision {
            Decision::Retry { server: next, .. } => {
                assert_eq!(next, server("other.example", 1884));
            }
            Decision::Stop => panic!("stopped"),
        }

        // The referenced server failed: the list continues after the first server.
        policy.handle_down(&lost(), None, now);
        assert_eq!(policy.server(), Some(&servers[1]));

        // A redirect without a reference behaves like a retry.
        policy.handle_down(&refused(ConnectReason::ServerMoved), None, now);
        assert_eq!(policy.server(), Some(&servers[0]));
    }

    #[test]
    fn server_reference_forms() {
        let cases = [
            ("host", Some(server("host", 1883))),
            ("host:1884", Some(server("host", 1884))),
            ("  first:1 second:2", Some(server("first", 1))),
            ("[::1]:1885", Some(server("::1", 1885))),
            ("[::1]", Some(server("::1", 1883))),
            ("", None),
            (":1884", None),
            ("host:port", None),
            ("host:70000", None),
            ("::1", None),
            ("[::1]x", None),
        ];
        for (reference, expected) in cases {
            assert_eq!(
                parse_server_reference(reference, 1883),
                expected,
                "{reference:?}"
            );
        }
    }
}
