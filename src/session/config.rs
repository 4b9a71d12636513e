//! What the session needs to know before it connects: the CONNECT fields and the limits
//! this client announces and enforces.

use std::num::{NonZeroU16, NonZeroU32};
use std::time::Duration;

use bytes::Bytes;
use bytestring::ByteString;

use crate::codec::{ClientId, Connect, LastWill, Properties, ProtocolVersion};

/// Settings of one session, fixed for its lifetime.
#[derive(Clone)]
pub struct SessionConfig {
    /// Client identifier sent in CONNECT; empty asks the broker to assign one.
    pub client_id: ClientId,
    /// Protocol version spoken on the connection.
    pub protocol: ProtocolVersion,
    /// Keep-alive interval sent in CONNECT, whole seconds up to 65,535; zero turns
    /// keep-alive off unless the broker sets Server Keep Alive.
    pub keep_alive: Duration,
    /// Clean start (v5) or clean session (3.1.1).
    pub clean_start: bool,
    /// Session Expiry Interval in seconds (v5); `None` or 0 sends no property.
    pub session_expiry: Option<u32>,
    /// User name for authentication.
    pub username: Option<ByteString>,
    /// Password for authentication; never logged.
    pub password: Option<Bytes>,
    /// Last will the broker publishes if the connection ends abnormally.
    pub will: Option<LastWill>,
    /// Receive Maximum announced to the broker (v5) and enforced on inbound QoS 1 and 2
    /// messages; 65,535 sends no property.
    pub receive_maximum: NonZeroU16,
    /// Largest number of outbound QoS 1 and 2 messages in flight; the broker's Receive
    /// Maximum lowers it further.
    pub max_inflight: NonZeroU16,
    /// Topic Alias Maximum announced to the broker (v5); 0 sends no property and makes
    /// every inbound topic alias a protocol error.
    pub topic_alias_maximum: u16,
    /// Maximum Packet Size announced to the broker (v5), in bytes.
    pub max_packet_size: Option<NonZeroU32>,
    /// Extra CONNECT properties (v5), such as user properties.
    pub connect_properties: Properties,
    /// Time from the start of the attempt until CONNACK must have arrived.
    pub connect_timeout: Duration,
    /// Time a requested disconnect waits for outbound flows to complete before it sends
    /// DISCONNECT anyway.
    pub disconnect_timeout: Duration,
}

impl SessionConfig {
    /// Returns a configuration with the default limits for `client_id` and `protocol`.
    #[must_use]
    pub fn new(client_id: ClientId, protocol: ProtocolVersion) -> Self {
        Self {
            client_id,
            protocol,
            keep_alive: Duration::from_secs(60),
            clean_start: true,
            session_expiry: None,
            username: None,
            password: None,
            will: None,
            receive_maximum: NonZeroU16::MAX,
            max_inflight: NonZeroU16::MAX,
            topic_alias_maximum: 0,
            max_packet_size: None,
            connect_properties: Properties::default(),
            connect_timeout: Duration::from_secs(10),
            disconnect_timeout: Duration::from_secs(5),
        }
    }

    /// Builds the CONNECT packet this configuration describes.
    #[must_use]
    pub fn connect_packet(&self) -> Connect {
        Connect {
            protocol: self.protocol,
            clean_start: self.clean_start,
            keep_alive: keep_alive_seconds(self.keep_alive),
            client_id: self.client_id.clone(),
            will: self.will.clone(),
            username: self.username.clone(),
            password: self.password.clone(),
            properties: self.connect_properties(),
        }
    }

    /// Returns the CONNECT properties: the extra ones plus the limits this client
    /// announces (v5), each only when it differs from the protocol default.
    fn connect_properties(&self) -> Properties {
        // Before MQTT 5 there are no properties; extra ones are passed on unchanged so
        // that the encoder rejects them instead of dropping them silently.
        if !self.protocol.is_v5() {
            return self.connect_properties.clone();
        }
        let mut properties = self.connect_properties.clone();
        if self.receive_maximum != NonZeroU16::MAX {
            properties.receive_maximum = Some(self.receive_maximum);
        }
        if self.topic_alias_maximum != 0 {
            properties.topic_alias_maximum = Some(self.topic_alias_maximum);
        }
        if let Some(expiry) = self.session_expiry.filter(|expiry| *expiry != 0) {
            properties.session_expiry_interval = Some(expiry);
        }
        if self.max_packet_size.is_some() {
            properties.maximum_packet_size = self.max_packet_size;
        }
        properties
    }
}

impl std::fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionConfig")
            .field("client_id", &self.client_id)
            .field("protocol", &self.protocol)
            .field("keep_alive", &self.keep_alive)
            .field("clean_start", &self.clean_start)
            .field("session_expiry", &self.session_expiry)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("will", &self.will.as_ref().map(|will| &will.topic))
            .field("receive_maximum", &self.receive_maximum)
            .field("max_inflight", &self.max_inflight)
            .field("topic_alias_maximum", &self.topic_alias_maximum)
            .field("max_packet_size", &self.max_packet_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("disconnect_timeout", &self.disconnect_timeout)
            .finish_non_exhaustive()
    }
}

/// Converts a keep-alive interval to the whole seconds CONNECT carries, saturating at
/// 65,535; the options builder rejects longer intervals before a session exists.
fn keep_alive_seconds(interval: Duration) -> u16 {
    u16::try_from(interval.as_secs()).unwrap_or(u16::MAX)
}
