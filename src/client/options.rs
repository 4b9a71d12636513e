//! The options builder and the validation that turns it into a running client.

use std::fmt;
use std::num::{NonZeroU16, NonZeroU32};
use std::time::Duration;

use actix::Actor;
use bytes::Bytes;

use crate::actors::{ClientActor, ClientConfig, QueueConfig};
use crate::codec::{
    self, ClientId, LastWill, Packet, Properties, ProtocolVersion, DEFAULT_MAX_PACKET_SIZE,
};
use crate::error::ClientError;
use crate::reconnect::{ReconnectConfig, ReconnectSettings};
use crate::session::SessionConfig;
use crate::transport::Endpoint;

use super::Client;

/// Upper bound of `max_pending_requests`. Each pending request holds a permit of a
/// tokio semaphore, which panics above about 2^61 permits; a million is far beyond any
/// queue a broker connection drains in reasonable time.
const MAX_PENDING_REQUESTS: usize = 1 << 20;

/// Default of `max_inflight` for MQTT 3.1 and 3.1.1, whose brokers cannot announce a
/// Receive Maximum: the default limit of Mosquitto 2.0, which drops what exceeds it.
const DEFAULT_MAX_INFLIGHT_V3: u16 = 20;

/// Port of unencrypted MQTT.
const DEFAULT_PORT: u16 = 1883;

/// Longest connect or disconnect timeout accepted: about 136 years, far beyond any use,
/// and small enough that adding it to the current instant cannot overflow.
const MAX_TIMEOUT: Duration = Duration::from_secs(u32::MAX as u64);

/// Policy for a new request when the request queue is full; see
/// [`ClientOptions::queue_full_policy`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueueFullPolicy {
    /// Keep the queued requests and reject the new one: [`Client::try_publish`]
    /// fails with [`ClientError::QueueFull`], and [`Client::publish`],
    /// [`Client::subscribe`] and [`Client::unsubscribe`] wait for a place in the count
    /// limit. The default.
    ///
    /// [`Client::try_publish`]: crate::Client::try_publish
    /// [`Client::publish`]: crate::Client::publish
    /// [`Client::subscribe`]: crate::Client::subscribe
    /// [`Client::unsubscribe`]: crate::Client::unsubscribe
    #[default]
    RefuseNew,
    /// Remove the oldest request still waiting to be sent, never one in flight, and
    /// queue the new one. The removed request's caller gets
    /// [`ClientError::DroppedFromQueue`] and listeners get
    /// [`Event::RequestDropped`](crate::Event::RequestDropped). No caller waits: when
    /// every place is taken by requests already in flight, nothing can be removed and
    /// the new request fails with [`ClientError::QueueFull`].
    DropOldest,
}

/// How to reach the broker and what to announce to it; [`ClientOptions::start`] starts a
/// client with them.
///
/// ```no_run
/// # #[actix_rt::main]
/// # async fn main() -> Result<(), mqttlink::ClientError> {
/// use std::time::Duration;
/// use mqttlink::codec::ProtocolVersion;
/// use mqttlink::ClientOptions;
///
/// let client = ClientOptions::from_url("mqtt://127.0.0.1:1883")?
///     .client_id("my-client")
///     .protocol(ProtocolVersion::V5)
///     .keep_alive(Duration::from_secs(30))
///     .start()?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
#[allow(clippy::struct_excessive_bools)] // Each flag is one independent builder option.
pub struct ClientOptions {
    host: String,
    port: u16,
    client_id: String,
    protocol: ProtocolVersion,
    keep_alive: Duration,
    clean_start: bool,
    session_expiry: Option<Duration>,
    username: Option<String>,
    password: Option<Vec<u8>>,
    will: Option<LastWill>,
    connect_timeout: Duration,
    disconnect_timeout: Duration,
    receive_maximum: u16,
    /// `None` until set: the default then depends on the protocol version.
    max_inflight: Option<u16>,
    max_pending_requests: usize,
    max_queued_bytes: Option<usize>,
    queue_full_policy: QueueFullPolicy,
    queue_qos0_offline: bool,
    adopt_broker_session: bool,
    max_packet_size: Option<u32>,
    connect_properties: Properties,
    reconnect: bool,
    backoff_base: Duration,
    backoff_max: Duration,
    reset_after: Duration,
    fallback_servers: Vec<Endpoint>,
    resume_on_reconnect: bool,
    resubscribe: bool,
}

impl ClientOptions {
    /// Creates options for the broker at `host` and `port`, with MQTT 5.0, an empty
    /// client identifier (the broker assigns one), keep-alive 60 s and clean start.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
            client_id: String::new(),
            protocol: ProtocolVersion::V5,
            keep_alive: Duration::from_secs(60),
            clean_start: true,
            session_expiry: None,
            username: None,
            password: None,
            will: None,
            connect_timeout: Duration::from_secs(10),
            disconnect_timeout: Duration::from_secs(5),
            receive_maximum: u16::MAX,
            max_inflight: None,
            max_pending_requests: 1024,
            max_queued_bytes: None,
            queue_full_policy: QueueFullPolicy::RefuseNew,
            queue_qos0_offline: true,
            adopt_broker_session: false,
            max_packet_size: None,
            connect_properties: Properties::default(),
            reconnect: false,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            reset_after: Duration::from_secs(30),
            fallback_servers: Vec::new(),
            resume_on_reconnect: false,
            resubscribe: true,
        }
    }

    /// Parses an `mqtt://[user[:password]@]host[:port]` URL; the port defaults to 1883.
    pub fn from_url(url: &str) -> Result<Self, ClientError> {
        let parsed = url::Url::parse(url).map_err(|error| {
            ClientError::InvalidOptions(format!("invalid URL {url:?}: {error}"))
        })?;
        if parsed.scheme() != "mqtt" {
            return Err(ClientError::InvalidOptions(format!(
                "unsupported URL scheme {:?}, expected \"mqtt\"",
                parsed.scheme()
            )));
        }
        let host = parsed
            .host_str()
            .filter(|host| !host.is_empty())
            .ok_or_else(|| ClientError::InvalidOptions(format!("URL {url:?} has no host")))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let mut options = Self::new(host, parsed.port().unwrap_or(DEFAULT_PORT));
        if !parsed.username().is_empty() {
            let password = parsed
                .password()
                .map(|password| password.as_bytes().to_vec());
            options = options.credentials(parsed.username(), password);
        }
        Ok(options)
    }

    /// Sets the client identifier. With an empty one the broker assigns an identifier,
    /// which needs clean start before MQTT 5.
    #[must_use]
    pub fn client_id(mut self, client_id: &str) -> Self {
        client_id.clone_into(&mut self.client_id);
        self
    }

    /// Sets the protocol version; MQTT 5.0 by default.
    #[must_use]
    pub fn protocol(mut self, protocol: ProtocolVersion) -> Self {
        self.protocol = protocol;
        self
    }

    /// Sets the keep-alive interval, whole seconds up to 65,535; zero turns it off.
    #[must_use]
    pub fn keep_alive(mut self, interval: Duration) -> Self {
        self.keep_alive = interval;
        self
    }

    /// Sets clean start (v5) or clean session (3.1.1); `true` by default.
    #[must_use]
    pub fn clean_start(mut self, clean_start: bool) -> Self {
        self.clean_start = clean_start;
        self
    }

    /// Sets the Session Expiry Interval (v5), whole seconds; zero (the default) ends the
    /// session with the connection.
    #[must_use]
    pub fn session_expiry(mut self, expiry: Duration) -> Self {
        self.session_expiry = Some(expiry);
        self
    }

    /// Sets the user name and, optionally, the password. The password is never logged.
    #[must_use]
    pub fn credentials(mut self, username: &str, password: Option<Vec<u8>>) -> Self {
        self.username = Some(username.to_owned());
        self.password = password;
        self
    }

    /// Sets the last will, published by the broker if the connection ends abnormally.
    #[must_use]
    pub fn last_will(mut self, will: LastWill) -> Self {
        self.will = Some(will);
        self
    }

    /// Sets the time from the start of a connection attempt until CONNACK must arrive,
    /// TCP connect included; 10 s by default.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets how long [`Disconnect`](crate::Disconnect) waits for outbound QoS 1 and 2
    /// flows before it sends DISCONNECT anyway; 5 s by default. When the broker does
    /// not read, the bytes queued before the DISCONNECT get as long again to leave, so
    /// a disconnect ends within twice this time.
    #[must_use]
    pub fn disconnect_timeout(mut self, timeout: Duration) -> Self {
        self.disconnect_timeout = timeout;
        self
    }

    /// Sets the Receive Maximum sent in CONNECT (v5): most inbound QoS 1 and 2 messages
    /// unacknowledged at once. Must not be zero; 65,535 (the default) sends no property.
    #[must_use]
    pub fn receive_maximum(mut self, maximum: u16) -> Self {
        self.receive_maximum = maximum;
        self
    }

    /// Sets the most outbound QoS 1 and 2 messages in flight at once; the broker's Receive
    /// Maximum lowers it further. Must not be zero.
    ///
    /// The default is 65,535 for MQTT 5.0, where the broker announces its limit, and
    /// 20 for 3.1 and 3.1.1, where it cannot. Mosquitto 2.0, for
    /// one, accepts 20 messages in flight from a client by default; above that it drops
    /// the message and still acknowledges it to a 3.1.1 client, which cannot tell.
    #[must_use]
    pub fn max_inflight(mut self, maximum: u16) -> Self {
        self.max_inflight = Some(maximum);
        self
    }

    /// Sets the most requests queued or in flight at once; beyond it `publish` waits and
    /// `try_publish` fails with [`ClientError::QueueFull`], unless
    /// [`ClientOptions::queue_full_policy`] drops the oldest waiting request. 1,024 by
    /// default; `start` rejects 0 and values above 1,048,576.
    #[must_use]
    pub fn max_pending_requests(mut self, maximum: usize) -> Self {
        self.max_pending_requests = maximum;
        self
    }

    /// Limits the requests waiting to be sent to `maximum` bytes, beside the count
    /// limit of [`ClientOptions::max_pending_requests`]; no byte limit by default.
    ///
    /// A request counts its topic or filters, payload and variable-length properties
    /// (see [`Request::queued_size`](crate::store::Request::queued_size)), from the
    /// moment it is queued until it is sent. A request larger than `maximum` on its own
    /// fails at once with [`ClientError::TooLargeForQueue`]. When the queued bytes would
    /// go above `maximum`, [`QueueFullPolicy::DropOldest`] removes old requests until the
    /// new one fits. Under [`QueueFullPolicy::RefuseNew`] the new request fails with
    /// [`ClientError::QueueFull`] at once, even from [`Client::publish`](crate::Client),
    /// which waits only for the count limit. `start` rejects 0.
    #[must_use]
    pub fn max_queued_bytes(mut self, maximum: usize) -> Self {
        self.max_queued_bytes = Some(maximum);
        self
    }

    /// Sets what happens to a new request when the request queue is full;
    /// [`QueueFullPolicy::RefuseNew`] by default.
    #[must_use]
    pub fn queue_full_policy(mut self, policy: QueueFullPolicy) -> Self {
        self.queue_full_policy = policy;
        self
    }

    /// Sets whether a QoS 0 publish made while no connection is up, before the first
    /// CONNACK or while automatic reconnect waits, is queued until the next connection.
    /// On by default. Off, such a publish fails at once with
    /// [`ClientError::NotConnected`], and QoS 0 publishes still queued when a connection
    /// ends fail with it too. QoS 1 and 2 publishes are queued either way.
    #[must_use]
    pub fn queue_qos0_offline(mut self, queue: bool) -> Self {
        self.queue_qos0_offline = queue;
        self
    }

    /// Lets the first connection resume a session that an earlier process left on the
    /// broker; `false` by default.
    ///
    /// A client without session state must close the connection when CONNACK reports
    /// Session Present 1 (MQTT 5.0 [MQTT-3.2.2-4]); this client applies the rule under
    /// 3.1.1 too. It has session state after a connection whose session outlives it:
    /// clean session 0 under 3.1.1, a Session Expiry Interval above 0 under v5. Turn this
    /// on, with [`ClientOptions::clean_start`]`(false)`, to receive the messages the broker
    /// stored for this client identifier while no process was connected. Unacknowledged
    /// flows of the earlier process are unknown to this one; the broker resends its own
    /// QoS 1 and 2 messages, and PUBACK or PUBCOMP for publishes of the earlier process
    /// are ignored with a warning.
    #[must_use]
    pub fn adopt_broker_session(mut self, adopt: bool) -> Self {
        self.adopt_broker_session = adopt;
        self
    }

    /// Sets the largest packet accepted from the broker in bytes, announced as Maximum
    /// Packet Size (v5). Without it the limit is 16 MiB and nothing is announced.
    #[must_use]
    pub fn max_packet_size(mut self, maximum: u32) -> Self {
        self.max_packet_size = Some(maximum);
        self
    }

    /// Sets extra CONNECT properties (v5), such as user properties; the limits set by the
    /// other options are added to them.
    #[must_use]
    pub fn connect_properties(mut self, properties: Properties) -> Self {
        self.connect_properties = properties;
        self
    }

    /// Turns automatic reconnect on or off; off by default.
    ///
    /// Off, the client stops when the connection ends and every pending request fails.
    /// On, a lost connection keeps the pending requests and the unacknowledged QoS 1
    /// and 2 flows, reports [`Event::Disconnected`](crate::Event) and
    /// [`Event::Reconnecting`](crate::Event), and connects again after a backoff delay
    /// (see [`ClientOptions::reconnect_backoff`]). It stops for good on
    /// [`Disconnect`](crate::Disconnect), when every handle is dropped, and when the
    /// broker rejects CONNECT for a reason a retry cannot fix, such as bad credentials,
    /// not authorized, banned, an invalid client identifier or an unsupported protocol
    /// version. It also stops when the broker sends DISCONNECT with Session Taken Over
    /// (v5), because another connection with the same client identifier took the
    /// session. With Use Another Server or Server Moved (v5) the next attempt goes to
    /// the server named in the Server Reference.
    #[must_use]
    pub fn reconnect(mut self, reconnect: bool) -> Self {
        self.reconnect = reconnect;
        self
    }

    /// Sets the backoff between reconnect attempts: the n-th attempt after a failure
    /// waits a random time between zero and `min(max, base * 2^(n-1))`. `base` must be
    /// greater than zero and `max` at least `base`; 500 ms and 30 s by default.
    #[must_use]
    pub fn reconnect_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_max = max;
        self
    }

    /// Sets how long a connection must stay up for the backoff to start again from its
    /// base; 30 s by default.
    #[must_use]
    pub fn reconnect_reset_after(mut self, stable: Duration) -> Self {
        self.reset_after = stable;
        self
    }

    /// Adds a server that reconnect attempts try in turn after the first one, for
    /// failover. A failed attempt moves on to the next server in the list, and a lost
    /// connection is retried on the same server first.
    #[must_use]
    pub fn fallback_server(mut self, host: impl Into<String>, port: u16) -> Self {
        self.fallback_servers.push(Endpoint {
            host: host.into(),
            port,
        });
        self
    }

    /// With automatic reconnect, starts clean only on the first connection and asks the
    /// broker to resume the session on every reconnect; `false` by default, so every
    /// attempt uses [`ClientOptions::clean_start`]. Needs a non-empty client identifier.
    /// Under v5 a session outlives the connection only with a
    /// [`ClientOptions::session_expiry`] above zero.
    #[must_use]
    pub fn resume_on_reconnect(mut self, resume: bool) -> Self {
        self.resume_on_reconnect = resume;
        self
    }

    /// With automatic reconnect, subscribes again to every filter the broker granted
    /// when a reconnect finds no session on the broker (CONNACK Session Present 0). On by
    /// default. [`Event::Resubscribed`](crate::Event) reports how many.
    #[must_use]
    pub fn resubscribe(mut self, resubscribe: bool) -> Self {
        self.resubscribe = resubscribe;
        self
    }

    /// Validates the options and starts the client, which connects in the background.
    ///
    /// Must run inside a running actix `System` (`#[actix_rt::main]`,
    /// `#[actix_rt::test]`, `#[actix_web::main]`). Fails with
    /// [`ClientError::InvalidOptions`] naming the first invalid option, or when no
    /// System runs. Connection errors arrive later, as [`Event::Disconnected`](crate::Event)
    /// and as the error of pending requests.
    pub fn start(self) -> Result<Client, ClientError> {
        let (config, reconnect) = self.validate()?;
        if actix_rt::System::try_current().is_none() {
            return Err(ClientError::InvalidOptions(
                "start() must be called inside a running actix System".to_owned(),
            ));
        }
        let policy = config.queue.full_policy;
        let actor = ClientActor::with_reconnect(config, reconnect);
        let permits = actor.permits();
        Ok(Client::new(actor.start(), permits, policy))
    }

    fn validate(self) -> Result<(ClientConfig, Option<ReconnectSettings>), ClientError> {
        let client_id = self.check_identity()?;
        self.check_timing()?;
        let reconnect = self.check_reconnect(&client_id)?;
        let limits = self.check_limits()?;

        let mut session = SessionConfig::new(client_id, self.protocol);
        session.keep_alive = self.keep_alive;
        session.clean_start = self.clean_start;
        session.session_expiry = limits.session_expiry;
        session.username = self.username.map(Into::into);
        session.password = self.password.map(Bytes::from);
        session.will = self.will;
        session.receive_maximum = limits.receive_maximum;
        session.max_inflight = limits.max_inflight;
        session.max_packet_size = limits.max_packet_size;
        session.connect_properties = self.connect_properties;
        session.connect_timeout = self.connect_timeout;
        session.disconnect_timeout = self.disconnect_timeout;

        // A CONNECT the codec cannot encode, such as will properties under 3.1.1, would
        // only fail once connected, so it is rejected here.
        let connect = Packet::Connect(Box::new(session.connect_packet()));
        if let Err(error) = codec::encoded_len(&connect, self.protocol) {
            return invalid(format!("options cannot be sent in CONNECT: {error}"));
        }

        // The decoder enforces the same Maximum Packet Size that CONNECT announces,
        // whether it came from `max_packet_size` or from `connect_properties`.
        let max_packet_size_in = session
            .effective_limits()
            .maximum_packet_size
            .map_or(DEFAULT_MAX_PACKET_SIZE, NonZeroU32::get);
        let config = ClientConfig {
            endpoint: Endpoint {
                host: self.host,
                port: self.port,
            },
            session,
            max_pending_requests: self.max_pending_requests,
            max_packet_size_in,
            queue: QueueConfig {
                max_bytes: self.max_queued_bytes,
                full_policy: self.queue_full_policy,
                qos0_offline: self.queue_qos0_offline,
            },
            adopt_broker_session: self.adopt_broker_session,
        };
        Ok((config, reconnect))
    }

    /// Checks the reconnect options and builds the policy settings, or `None` when
    /// reconnect is off.
    fn check_reconnect(
        &self,
        client_id: &ClientId,
    ) -> Result<Option<ReconnectSettings>, ClientError> {
        if !self.reconnect {
            return Ok(None);
        }
        if self.backoff_base.is_zero() {
            return invalid("reconnect_backoff base must be greater than 0");
        }
        if self.backoff_max < self.backoff_base {
            return invalid(format!(
                "reconnect_backoff max of {:?} is below its base of {:?}",
                self.backoff_max, self.backoff_base
            ));
        }
        for (name, value) in [
            ("reconnect_backoff max", self.backoff_max),
            ("reconnect_reset_after", self.reset_after),
        ] {
            if value > MAX_TIMEOUT {
                return invalid(format!("{name} of {value:?} exceeds {MAX_TIMEOUT:?}"));
            }
        }
        if self.resume_on_reconnect && client_id.is_empty() {
            return invalid("resume_on_reconnect(true) needs a non-empty client_id");
        }

        let mut servers = vec![Endpoint {
            host: self.host.clone(),
            port: self.port,
        }];
        servers.extend(self.fallback_servers.iter().cloned());
        Ok(Some(ReconnectSettings {
            policy: ReconnectConfig {
                servers,
                backoff_base: self.backoff_base,
                backoff_max: self.backoff_max,
                reset_after: self.reset_after,
            },
            resume_on_reconnect: self.resume_on_reconnect,
            resubscribe: self.resubscribe,
        }))
    }

    /// Parses the client identifier and checks the rules that tie it, and the password,
    /// to the protocol version.
    fn check_identity(&self) -> Result<ClientId, ClientError> {
        let client_id: ClientId = self
            .client_id
            .parse()
            .map_err(|error| ClientError::InvalidOptions(format!("invalid client_id: {error}")))?;
        // MQTT 3.1.1 requires clean session with an empty client identifier (section 3.1.3.1).
        if client_id.is_empty() && !self.clean_start && !self.protocol.is_v5() {
            return invalid("an empty client_id needs clean_start(true) before MQTT 5");
        }
        // MQTT 3.1 limits the client identifier to 23 bytes.
        if self.protocol == ProtocolVersion::V3_1
            && (client_id.is_empty() || self.client_id.len() > 23)
        {
            return invalid("MQTT 3.1 needs a client_id of 1 to 23 bytes");
        }
        // A session left on the broker belongs to a client identifier.
        if self.adopt_broker_session && client_id.is_empty() {
            return invalid("adopt_broker_session(true) needs a non-empty client_id");
        }
        // Before MQTT 5, a password needs a user name [MQTT-3.1.2-22].
        if self.password.is_some() && self.username.is_none() && !self.protocol.is_v5() {
            return invalid("a password needs a user name before MQTT 5");
        }
        Ok(client_id)
    }

    /// Checks the keep-alive interval and the timeouts.
    fn check_timing(&self) -> Result<(), ClientError> {
        if self.keep_alive.as_secs() > u64::from(u16::MAX) {
            return invalid(format!(
                "keep_alive of {:?} exceeds 65535 s",
                self.keep_alive
            ));
        }
        if self.keep_alive.subsec_nanos() != 0 {
            return invalid(format!(
                "keep_alive of {:?} is not whole seconds; use 0 to turn it off",
                self.keep_alive
            ));
        }
        for (name, timeout) in [
            ("connect_timeout", self.connect_timeout),
            ("disconnect_timeout", self.disconnect_timeout),
        ] {
            if timeout > MAX_TIMEOUT {
                return invalid(format!("{name} of {timeout:?} exceeds {MAX_TIMEOUT:?}"));
            }
        }
        if self.connect_timeout.is_zero() {
            return invalid("connect_timeout must be greater than 0");
        }
        Ok(())
    }

    /// Checks the flow-control and size limits and converts them to their session types.
    fn check_limits(&self) -> Result<Limits, ClientError> {
        let Some(receive_maximum) = NonZeroU16::new(self.receive_maximum) else {
            return invalid("receive_maximum must not be 0");
        };
        let max_inflight = self.max_inflight.unwrap_or(if self.protocol.is_v5() {
            u16::MAX
        } else {
            DEFAULT_MAX_INFLIGHT_V3
        });
        let Some(max_inflight) = NonZeroU16::new(max_inflight) else {
            return invalid("max_inflight must not be 0");
        };
        if self.max_pending_requests == 0 {
            return invalid("max_pending_requests must not be 0");
        }
        if self.max_queued_bytes == Some(0) {
            return invalid("max_queued_bytes must not be 0");
        }
        if self.max_pending_requests > MAX_PENDING_REQUESTS {
            return invalid(format!(
                "max_pending_requests {} is above the maximum {MAX_PENDING_REQUESTS}",
                self.max_pending_requests
            ));
        }
        let session_expiry = match self
            .session_expiry
            .map(|expiry| u32::try_from(expiry.as_secs()))
        {
            Some(Ok(seconds)) => Some(seconds),
            Some(Err(_)) => return invalid("session_expiry exceeds 4294967295 s"),
            None => None,
        };
        let max_packet_size = match self.max_packet_size.map(NonZeroU32::new) {
            Some(None) => return invalid("max_packet_size must not be 0"),
            Some(Some(size)) => Some(size),
            None => None,
        };
        Ok(Limits {
            receive_maximum,
            max_inflight,
            session_expiry,
            max_packet_size,
        })
    }
}

/// The validated limits of [`ClientOptions`], in the types the session uses.
struct Limits {
    receive_maximum: NonZeroU16,
    max_inflight: NonZeroU16,
    session_expiry: Option<u32>,
    max_packet_size: Option<NonZeroU32>,
}

/// Returns a [`ClientError::InvalidOptions`] error with `message`.
fn invalid<T>(message: impl Into<String>) -> Result<T, ClientError> {
    Err(ClientError::InvalidOptions(message.into()))
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("client_id", &self.client_id)
            .field("protocol", &self.protocol)
            .field("keep_alive", &self.keep_alive)
            .field("clean_start", &self.clean_start)
            .field("session_expiry", &self.session_expiry)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("will", &self.will.as_ref().map(|will| &will.topic))
            .field("connect_timeout", &self.connect_timeout)
            .field("disconnect_timeout", &self.disconnect_timeout)
            .field("receive_maximum", &self.receive_maximum)
            .field("max_inflight", &self.max_inflight)
            .field("max_pending_requests", &self.max_pending_requests)
            .field("max_queued_bytes", &self.max_queued_bytes)
            .field("queue_full_policy", &self.queue_full_policy)
            .field("queue_qos0_offline", &self.queue_qos0_offline)
            .field("adopt_broker_session", &self.adopt_broker_session)
            .field("max_packet_size", &self.max_packet_size)
            .field("reconnect", &self.reconnect)
            .field("backoff_base", &self.backoff_base)
            .field("backoff_max", &self.backoff_max)
            .field("reset_after", &self.reset_after)
            .field("fallback_servers", &self.fallback_servers)
            .field("resume_on_reconnect", &self.resume_on_reconnect)
            .field("resubscribe", &self.resubscribe)
            .finish_non_exhaustive()
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
    use super::*;

    #[test]
    fn url_sets_host_port_and_credentials() {
        let options = ClientOptions::from_url("mqtt://user:secret@broker.example:1884").unwrap();
        assert_eq!(options.host, "broker.example");
        assert_eq!(options.port, 1884);
        assert_eq!(options.username.as_deref(), Some("user"));
        assert_eq!(options.password.as_deref(), Some(&b"secret"[..]));

        let options = ClientOptions::from_url("mqtt://127.0.0.1").unwrap();
        assert_eq!(options.port, 1883);
    }

    #[test]
    fn url_with_other_scheme_rejected() {
        assert!(matches!(
            ClientOptions::from_url("mqtts://127.0.0.1"),
            Err(ClientError::InvalidOptions(_))
        ));
        assert!(matches!(
            ClientOptions::from_url("not a url"),
            Err(ClientError::InvalidOptions(_))
        ));
    }

    #[test]
    fn debug_redacts_password() {
        let options = ClientOptions::new("h", 1).credentials("user", Some(b"hunter2".to_vec()));
        let printed = format!("{options:?}");
        assert!(!printed.contains("hunter2"));
        assert!(printed.contains("<redacted>"));
    }

    #[test]
    fn invalid_options_rejected() {
        let base = || ClientOptions::new("h", 1).client_id("c");
        let cases = vec![
            base().receive_maximum(0),
            base().max_inflight(0),
            base().max_pending_requests(0),
            base().max_pending_requests(MAX_PENDING_REQUESTS + 1),
            base().max_pending_requests(usize::MAX),
            base().max_queued_bytes(0),
            base().keep_alive(Duration::from_secs(70_000)),
            base().keep_alive(Duration::from_millis(500)),
            base().keep_alive(Duration::from_millis(1500)),
            base().connect_timeout(Duration::ZERO),
            base().connect_timeout(Duration::MAX),
            base().disconnect_timeout(Duration::MAX),
            base()
                .reconnect(true)
                .reconnect_backoff(Duration::ZERO, Duration::from_secs(1)),
            base()
                .reconnect(true)
                .reconnect_backoff(Duration::from_secs(2), Duration::from_secs(1)),
            base()
                .reconnect(true)
                .reconnect_backoff(Duration::from_secs(1), Duration::MAX),
            base().reconnect(true).reconnect_reset_after(Duration::MAX),
            base()
                .client_id("")
                .reconnect(true)
                .resume_on_reconnect(true),
            base().client_id("").adopt_broker_session(true),
            base()
                .client_id("")
                .clean_start(false)
                .protocol(ProtocolVersion::V3_1_1),
            base()
                .client_id("a-client-id-longer-than-23")
                .protocol(ProtocolVersion::V3_1),
            ClientOptions::new("h", 1).client_id("nul\0"),
            base()
                .protocol(ProtocolVersion::V3_1_1)
                .connect_properties(Properties {
                    session_expiry_interval: Some(5),
                    ..Properties::default()
                }),
        ];
        for options in cases {
            let described = format!("{options:?}");
            assert!(
                matches!(options.validate(), Err(ClientError::InvalidOptions(_))),
                "accepted {described}"
            );
        }
    }

    #[test]
    fn reconnect_options_build_server_list() {
        let (_, reconnect) = ClientOptions::new("first", 1)
            .client_id("c")
            .reconnect(true)
            .fallback_server("second", 2)
            .validate()
            .unwrap();
        let reconnect = reconnect.expect("reconnect settings");
        let servers: Vec<_> = reconnect
            .policy
            .servers
            .iter()
            .map(|server| (server.host.as_str(), server.port))
            .collect();
        assert_eq!(servers, [("first", 1), ("second", 2)]);
        assert!(reconnect.resubscribe);
        assert!(!reconnect.resume_on_reconnect);

        let (_, reconnect) = ClientOptions::new("h", 1)
            .client_id("c")
            .validate()
            .unwrap();
        assert!(reconnect.is_none(), "reconnect is off by default");
    }

    #[test]
    fn start_outside_system_fails() {
        let result = ClientOptions::new("127.0.0.1", 1).client_id("c").start();
        assert!(matches!(result, Err(ClientError::InvalidOptions(_))));
    }
}
