//! MQTT 5.0 properties (section 2.2.2), held in one struct for every packet.
//!
//! Which properties a packet may carry, and which may repeat, is checked by the
//! encoder and decoder; this module only defines the values and their identifiers.
//!
//! [`Properties`] is large (384 bytes on 64-bit targets) and most packets carry none, so the packet
//! types hold it as a [`BoxedProperties`], which allocates only when a property is set.

use std::fmt;
use std::num::{NonZeroU16, NonZeroU32};
use std::ops::{Deref, DerefMut};

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
    /// No property set; a [`BoxedProperties`] without an allocation reads as this value.
    const EMPTY: Self = Self {
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        subscription_identifiers: Vec::new(),
        session_expiry_interval: None,
        assigned_client_identifier: None,
        server_keep_alive: None,
        authentication_method: None,
        authentication_data: None,
        request_problem_information: None,
        will_delay_interval: None,
        request_response_information: None,
        response_information: None,
        server_reference: None,
        reason_string: None,
        receive_maximum: None,
        topic_alias_maximum: None,
        topic_alias: None,
        maximum_qos: None,
        retain_available: None,
        user_properties: Vec::new(),
        maximum_packet_size: None,
        wildcard_subscription_available: None,
        subscription_identifier_available: None,
        shared_subscription_available: None,
    };

    /// Returns `true` when no property is set, so the encoder writes a zero length.
    #[must_use]
    #[inline]
    pub fn is_empty(&self) -> bool {
        !super::property_wire::has_properties(self)
    }
}

/// The value of a [`BoxedProperties`] without an allocation.
static NO_PROPERTIES: Properties = Properties::EMPTY;

/// The [`Properties`] of a packet or message, on the heap only when at least one is set.
///
/// It dereferences to [`Properties`], so fields read as `packet.properties.topic_alias`.
/// A packet without properties, the common case, then moves and clones as one pointer
/// instead of 384 bytes. Convert with `Properties::into` and
/// [`BoxedProperties::into_inner`].
///
/// Mutable access through [`DerefMut`] allocates when nothing is set yet, so code on a
/// hot path should read first and write only when a property changes.
#[derive(Clone, Default)]
pub struct BoxedProperties(Option<Box<Properties>>);

impl BoxedProperties {
    /// Returns `true` when no property is set, without reading the fields when none
    /// were ever set.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.as_deref().map_or(true, Properties::is_empty)
    }

    /// Returns the properties as a plain value.
    #[must_use]
    pub fn into_inner(self) -> Properties {
        self.0.map(|boxed| *boxed).unwrap_or_default()
    }
}

impl Deref for BoxedProperties {
    type Target = Properties;

    fn deref(&self) -> &Properties {
        self.0.as_deref().unwrap_or(&NO_PROPERTIES)
    }
}

impl DerefMut for BoxedProperties {
    fn deref_mut(&mut self) -> &mut Properties {
        self.0.get_or_insert_with(Box::default)
    }
}

impl From<Properties> for BoxedProperties {
    fn from(properties: Properties) -> Self {
        if properties.is_empty() {
            return Self(None);
        }
        Self(Some(Box::new(properties)))
    }
}

impl From<BoxedProperties> for Properties {
    fn from(properties: BoxedProperties) -> Self {
        properties.into_inner()
    }
}

impl PartialEq for BoxedProperties {
    /// Compares the properties set, so an allocation with none set equals no allocation.
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for BoxedProperties {}

impl PartialEq<Properties> for BoxedProperties {
    fn eq(&self, other: &Properties) -> bool {
        **self == *other
    }
}

impl fmt::Debug for BoxedProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn boxed_properties_allocate_only_when_set() {
        assert!(BoxedProperties::from(Properties::default()).0.is_none());
        let set = BoxedProperties::from(Properties {
            topic_alias: NonZeroU16::new(3),
            ..Properties::default()
        });
        assert!(set.0.is_some());
        assert_eq!(set.topic_alias, NonZeroU16::new(3));
        assert!(!set.is_empty());
    }

    #[test]
    fn boxed_properties_read_empty_without_allocation() {
        let empty = BoxedProperties::default();
        assert!(empty.is_empty());
        assert_eq!(*empty, Properties::default());
        assert!(empty.user_properties.is_empty());
        assert_eq!(empty.into_inner(), Properties::default());
    }

    #[test]
    fn properties_with_one_field_set_are_not_empty() {
        let cases = [
            Properties {
                payload_format_indicator: Some(PayloadFormat::Utf8),
                ..Properties::default()
            },
            Properties {
                subscription_identifiers: vec![NonZeroU32::MIN],
                ..Properties::default()
            },
            Properties {
                reason_string: Some("r".into()),
                ..Properties::default()
            },
            Properties {
                user_properties: vec![("a".into(), "b".into())],
                ..Properties::default()
            },
            Properties {
                shared_subscription_available: Some(false),
                ..Properties::default()
            },
        ];
        assert!(Properties::default().is_empty());
        for properties in cases {
            assert!(!properties.is_empty(), "{properties:?}");
        }
    }

    #[test]
    fn packets_stay_small() {
        // Moving a packet copies its whole size, whatever the variant, and every
        // inbound message moves several times between decoder and recipient.
        let publish = std::mem::size_of::<crate::codec::Publish>();
        let packet = std::mem::size_of::<crate::codec::Packet>();
        assert!(publish <= 96, "Publish is {publish} bytes");
        assert!(packet <= 96, "Packet is {packet} bytes");
    }

    #[test]
    fn boxed_properties_compare_by_value() {
        let mut written = BoxedProperties::from(Properties::default());
        written.topic_alias = None;
        assert!(written.0.is_some(), "mutable access allocates");
        assert_eq!(written, BoxedProperties::default());
        assert!(written.is_empty());

        written.message_expiry_interval = Some(60);
        assert_ne!(written, BoxedProperties::default());
        assert_eq!(
            written.clone().into_inner().message_expiry_interval,
            Some(60)
        );
    }
}
