//! What the session needs to know before it connects: the CONNECT fields and the limits
//! this client announces and enforces.

use std::num::{NonZeroU16, NonZeroU32};
use std::time::Duration;

use bytes::Bytes;
use bytestring::ByteString;

use crate::codec::{
    ClientId, Connect, Disconnect, DisconnectReason, LastWill, Properties, ProtocolVersion,
};

use super::RequestError;

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
    /// Session Expiry Interval in seconds (v5); `None` or 0 leaves the one in
    /// `connect_properties` in force, and without one no property is sent.
    pub session_expiry: Option<u32>,
    /// User name for authentication.
    pub username: Option<ByteString>,
    /// Password for authentication; never logged.
    pub password: Option<Bytes>,
    /// Last will the broker publishes if the connection ends abnormally.
    pub will: Option<LastWill>,
    /// Receive Maximum announced to the broker (v5) and enforced on inbound QoS 1 and 2
    /// messages; 65,535 leaves the one in `connect_properties` in force.
    pub receive_maximum: NonZeroU16,
    /// Largest number of outbound QoS 1 and 2 messages in flight; the broker's Receive
    /// Maximum lowers it further.
    pub max_inflight: NonZeroU16,
    /// Topic Alias Maximum announced to the broker (v5) and enforced on inbound topic
    /// aliases; 0 leaves the one in `connect_properties` in force, and without one every
    /// inbound topic alias is a protocol error.
    pub topic_alias_maximum: u16,
    /// Maximum Packet Size announced to the broker (v5) and enforced on inbound packets,
    /// in bytes; `None` leaves the one in `connect_properties` in force.
    pub max_packet_size: Option<NonZeroU32>,
    /// Extra CONNECT properties (v5), such as user properties. The limits in it apply
    /// where the fields above leave them; see [`SessionConfig::effective_limits`].
    pub connect_properties: Properties,
    /// Time from the start of the attempt until CONNACK must have arrived.
    pub connect_timeout: Duration,
    /// Time a requested disconnect waits for outbound flows to complete before it sends
    /// DISCONNECT anyway.
    pub disconnect_timeout: Duration,
    /// Whether this client has session state that a broker may resume: the store of an
    /// earlier connection whose session outlived it, or a session the application chose
    /// to adopt. Without it, a CONNACK with Session Present 1 closes the connection.
    /// `false` by default.
    pub has_session_state: bool,
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
            has_session_state: false,
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

    /// Returns the limits this client sends in CONNECT and enforces on the broker's
    /// packets, with the Session Expiry Interval it sends. Each explicit field wins when
    /// it differs from its default, else the value in `connect_properties` applies, else
    /// the protocol default. The CONNECT packet and the session's checks both read this
    /// result, so under v5 the session enforces exactly the limits announced.
    #[must_use]
    pub fn effective_limits(&self) -> EffectiveLimits {
        let extra = &self.connect_properties;
        let receive_maximum = if self.receive_maximum == NonZeroU16::MAX {
            extra.receive_maximum.unwrap_or(NonZeroU16::MAX)
        } else {
            self.receive_maximum
        };
        let topic_alias_maximum = match self.topic_alias_maximum {
            0 => extra.topic_alias_maximum.unwrap_or(0),
            maximum => maximum,
        };
        let session_expiry = self
            .session_expiry
            .filter(|expiry| *expiry != 0)
            .or(extra.session_expiry_interval)
            .unwrap_or(0);
        EffectiveLimits {
            receive_maximum,
            topic_alias_maximum,
            maximum_packet_size: self.max_packet_size.or(extra.maximum_packet_size),
            session_expiry,
        }
    }

    /// Checks a DISCONNECT the application requested against the rules for a client
    /// (v5). Its reason code must be one a client may send (MQTT 5.0 section 3.14.2.1).
    /// It must not set a non-zero Session Expiry Interval when CONNECT sent zero or none
    /// (MQTT 5.0 section 3.14.2.2.2). Before v5, DISCONNECT carries neither field.
    ///
    /// # Errors
    ///
    /// [`RequestError::Invalid`] naming the rule the packet breaks.
    pub fn check_disconnect(&self, disconnect: &Disconnect) -> Result<(), RequestError> {
        if !self.protocol.is_v5() {
            return Ok(());
        }
        if !client_may_send(disconnect.reason) {
            return Err(RequestError::Invalid(format!(
                "DISCONNECT reason {:?} (0x{:02X}) is sent only by a server; use a client \
                 reason such as NormalDisconnection",
                disconnect.reason,
                disconnect.reason.code()
            )));
        }
        let requested = disconnect.properties.session_expiry_interval.unwrap_or(0);
        if requested != 0 && self.effective_limits().session_expiry == 0 {
            return Err(RequestError::Invalid(format!(
                "DISCONNECT session expiry of {requested} s is invalid because CONNECT \
                 sent none; leave it out or set ClientOptions::session_expiry"
            )));
        }
        Ok(())
    }

    /// Returns the CONNECT properties: the extra ones with the effective limits in place
    /// of theirs (v5), each limit only when it differs from the protocol default.
    fn connect_properties(&self) -> Properties {
        // Before MQTT 5 there are no properties; extra ones are passed on unchanged so
        // that the encoder rejects them instead of dropping them silently.
        if !self.protocol.is_v5() {
            return self.connect_properties.clone();
        }
        let limits = self.effective_limits();
        Properties {
            receive_maximum: Some(limits.receive_maximum).filter(|max| *max != NonZeroU16::MAX),
            topic_alias_maximum: Some(limits.topic_alias_maximum).filter(|max| *max != 0),
            maximum_packet_size: limits.maximum_packet_size,
            session_expiry_interval: Some(limits.session_expiry).filter(|expiry| *expiry != 0),
            ..self.connect_properties.clone()
        }
    }
}

/// Limits this client announces in CONNECT and enforces on what the broker sends, with
/// the Session Expiry Interval it announces; built by [`SessionConfig::effective_limits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EffectiveLimits {
    /// Most inbound QoS 1 and 2 messages unacknowledged at once; enforced under v5 only.
    pub receive_maximum: NonZeroU16,
    /// Highest inbound topic alias accepted; 0 accepts none.
    pub topic_alias_maximum: u16,
    /// Largest inbound packet accepted, in bytes; `None` announces no limit.
    pub maximum_packet_size: Option<NonZeroU32>,
    /// Session Expiry Interval sent in CONNECT, in seconds; 0 when none is sent.
    pub session_expiry: u32,
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

/// Returns whether a client may send DISCONNECT with `reason`; the other codes of the
/// table in MQTT 5.0 section 3.14.2.1 are sent only by a server.
fn client_may_send(reason: DisconnectReason) -> bool {
    use DisconnectReason as R;
    matches!(
        reason,
        R::NormalDisconnection
            | R::DisconnectWithWillMessage
            | R::UnspecifiedError
            | R::MalformedPacket
            | R::ProtocolError
            | R::ImplementationSpecificError
            | R::TopicNameInvalid
            | R::ReceiveMaximumExceeded
            | R::TopicAliasInvalid
            | R::PacketTooLarge
            | R::MessageRateTooHigh
            | R::QuotaExceeded
            | R::AdministrativeAction
            | R::PayloadFormatInvalid
    )
}
