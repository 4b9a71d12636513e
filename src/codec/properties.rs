//! MQTT 5.0 properties (section 2.2.2), held in one struct for every packet.
//!
//! Which properties a packet may carry, and which may repeat, is checked by the
//! encoder and decoder; this module only defines the values and their identifiers.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::Bytes;
use bytestring::ByteString;

use super::topic::TopicName;
use super::types::QoS;

/// Property identifier bytes (MQTT 5.0 section 2.2.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u8)]
#[allow(missing_docs)] // Each name is the specification's name for that identifier.
pub enum PropertyId {
    PayloadFormatIndicator = 0x01,
    MessageExpiryInterval = 0x02,
    ContentType = 0x03,
    ResponseTopic = 0x08,
    CorrelationData = 0x09,
    SubscriptionIdentifier = 0x0B,
    SessionExpiryInterval = 0x11,
    AssignedClientIdentifier = 0x12,
    ServerKeepAlive = 0x13,
    AuthenticationMethod = 0x15,
    AuthenticationData = 0x16,
    RequestProblemInformation = 0x17,
    WillDelayInterval = 0x18,
    RequestResponseInformation = 0x19,
    ResponseInformation = 0x1A,
    ServerReference = 0x1C,
    ReasonString = 0x1F,
    ReceiveMaximum = 0x21,
    TopicAliasMaximum = 0x22,
    TopicAlias = 0x23,
    MaximumQoS = 0x24,
    RetainAvailable = 0x25,
    UserProperty = 0x26,
    MaximumPacketSize = 0x27,
    WildcardSubscriptionAvailable = 0x28,
    SubscriptionIdentifierAvailable = 0x29,
    SharedSubscriptionAvailable = 0x2A,
}

impl TryFrom<u8> for PropertyId {
    type Error = u8;

    /// Parses a property identifier, returning the byte itself when it is unknown.
    fn try_from(value: u8) -> Result<Self, u8> {
        use PropertyId as P;
        let id = match value {
            0x01 => P::PayloadFormatIndicator,
            0x02 => P::MessageExpiryInterval,
            0x03 => P::ContentType,
            0x08 => P::ResponseTopic,
            0x09 => P::CorrelationData,
            0x0B => P::SubscriptionIdentifier,
            0x11 => P::SessionExpiryInterval,
            0x12 => P::AssignedClientIdentifier,
            0x13 => P::ServerKeepAlive,
            0x15 => P::AuthenticationMethod,
            0x16 => P::AuthenticationData,
            0x17 => P::RequestProblemInformation,
            0x18 => P::WillDelayInterval,
            0x19 => P::RequestResponseInformation,
            0x1A => P::ResponseInformation,
            0x1C => P::ServerReference,
            0x1F => P::ReasonString,
            0x21 => P::ReceiveMaximum,
            0x22 => P::TopicAliasMaximum,
            0x23 => P::TopicAlias,
            0x24 => P::MaximumQoS,
            0x25 => P::RetainAvailable,
            0x26 => P::UserProperty,
            0x27 => P::MaximumPacketSize,
            0x28 => P::WildcardSubscriptionAvailable,
            0x29 => P::SubscriptionIdentifierAvailable,
            0x2A => P::SharedSubscriptionAvailable,
            other => return Err(other),
        };
        Ok(id)
    }
}

/// Payload format indicator of a PUBLISH or will (MQTT 5.0 section 3.3.2.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadFormat {
    /// Unspecified bytes (value 0).
    Bytes = 0,
    /// UTF-8 encoded character data (value 1).
    Utf8 = 1,
}

/// The properties of one packet. A field is `None` (or empty) when the property is
/// absent; absent means the specification's default applies.
///
/// One struct serves every packet type so that the session code reads the same
/// field names everywhere; the codec rejects a property the packet type does not allow.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Properties {
    /// Payload format indicator (PUBLISH, will).
    pub payload_format_indicator: Option<PayloadFormat>,
    /// Message expiry interval in seconds (PUBLISH, will).
    pub message_expiry_interval: Option<u32>,
    /// MIME type of the payload (PUBLISH, will).
    pub content_type: Option<ByteString>,
    /// Topic for a response message (PUBLISH, will).
    pub response_topic: Option<TopicName>,
    /// Correlation data for request/response (PUBLISH, will).
    pub correlation_data: Option<Bytes>,
    /// Subscription identifiers: at most one on SUBSCRIBE, any number on PUBLISH
    /// from the server. Each is from 1 to 268,435,455.
    pub subscription_identifiers: Vec<NonZeroU32>,
    /// Session expiry interval in seconds (CONNECT, CONNACK, DISCONNECT).
    pub session_expiry_interval: Option<u32>,
    /// Client identifier assigned by the server (CONNACK).
    pub assigned_client_identifier: Option<ByteString>,
    /// Keep-alive in seconds the server requires instead of the client's (CONNACK).
    pub server_keep_alive: Option<u16>,
    /// Extended authentication method name (CONNECT, CONNACK, AUTH).
    pub authentication_method: Option<ByteString>,
    /// Extended authentication data (CONNECT, CONNACK, AUTH).
    pub authentication_data: Option<Bytes>,
    /// Whether the server may send reason strings and user properties on failures (CONNECT).
    pub request_problem_information: Option<bool>,
    /// Delay in seconds before the will is published (will).
    pub will_delay_interval: Option<u32>,
    /// Whether the server should return response information (CONNECT).
    pub request_response_information: Option<bool>,
    /// Basis for response topics (CONNACK).
    pub response_information: Option<ByteString>,
    /// Another server to use (CONNACK, DISCONNECT).
    pub server_reference: Option<ByteString>,
    /// Human-readable diagnostic text (acknowledgements, DISCONNECT, AUTH).
    pub reason_string: Option<ByteString>,
    /// Maximum number of unacknowledged QoS 1 and 2 PUBLISH packets the sender
    /// of this packet will process at once (CONNECT, CONNACK); never 0.
    pub receive_maximum: Option<NonZeroU16>,
    /// Highest topic alias the sender of this packet accepts (CONNECT, CONNACK).
    pub topic_alias_maximum: Option<u16>,
    /// Topic alias standing for the topic name (PUBLISH); never 0.
    pub topic_alias: Option<NonZeroU16>,
    /// Highest QoS the server supports, 0 or 1 when present (CONNACK).
    pub maximum_qos: Option<QoS>,
    /// Whether the server supports retained messages (CONNACK).
    pub retain_available: Option<bool>,
    /// User properties in the order received; a name may repeat.
    pub user_properties: Vec<(ByteString, ByteString)>,
    /// Largest packet in bytes the sender of this packet accepts (CONNECT, CONNACK).
    pub maximum_packet_size: Option<NonZeroU32>,
    /// Whether the server supports wildcard subscriptions (CONNACK).
    pub wildcard_subscription_available: Option<bool>,
    /// Whether the server supports subscription identifiers (CONNACK).
    pub subscription_identifier_available: Option<bool>,
    /// Whether the server supports shared subscriptions (CONNACK).
    pub shared_subscription_available: Option<bool>,
}

impl Properties {
    /// Returns `true` when no property is set, so the encoder writes a zero length.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}
