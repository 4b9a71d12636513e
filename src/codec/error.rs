//! Errors of the codec: what a received packet did wrong, and why a packet could not
//! be encoded.
//!
//! Every rule a peer can break is one [`Violation`] variant, which names the
//! specification's conformance id where it has one and the MQTT 5.0 reason code a
//! DISCONNECT reporting it carries. This module only describes errors; it does not
//! decide when they happen.

use super::packet::PacketType;
use super::reason::DisconnectReason;
use super::types::ProtocolVersion;

/// Default limit on the size of a received packet, fixed header included: 16 MiB.
///
/// The protocol allows packets of up to 256 MiB. A client that announces no Maximum
/// Packet Size still needs a bound on what it buffers, and 16 MiB leaves room for
/// large retained messages while keeping one malicious length prefix cheap.
pub const DEFAULT_MAX_PACKET_SIZE: u32 = 16 * 1024 * 1024;

/// A received packet that cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The packet broke a rule of the protocol.
    #[error(transparent)]
    Violation(#[from] Violation),
    /// The fixed header announces a packet larger than the decoder's maximum; this is
    /// detected before the body is buffered (MQTT 5.0 section 3.1.2.11.4).
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} bytes")]
    PacketTooLarge {
        /// Total size in bytes announced by the fixed header, fixed header included.
        size: usize,
        /// The decoder's maximum packet size in bytes.
        max: u32,
    },
}

impl DecodeError {
    /// Returns the MQTT 5.0 reason code a DISCONNECT reporting this error carries.
    #[must_use]
    pub fn reason_code(&self) -> DisconnectReason {
        match self {
            Self::Violation(violation) => violation.reason_code(),
            Self::PacketTooLarge { .. } => DisconnectReason::PacketTooLarge,
        }
    }

    /// Returns the specification's conformance id of the broken rule, such as
    /// `"MQTT-3.3.1-4"`, when the rule has one.
    #[must_use]
    pub fn rule(&self) -> Option<&'static str> {
        match self {
            Self::Violation(violation) => violation.rule(),
            Self::PacketTooLarge { .. } => None,
        }
    }
}

/// One rule of MQTT 3.1, 3.1.1 or 5.0 that a received packet broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Violation {
    /// A Variable Byte Integer (such as the remaining length) has a continuation bit in
    /// its fourth byte; at most four bytes are allowed (section 1.5.5).
    #[error("variable byte integer is longer than 4 bytes")]
    VariableByteIntegerTooLong,
    /// A Variable Byte Integer uses more bytes than its value needs [MQTT-1.5.5-1].
    #[error("variable byte integer is not encoded in the minimum number of bytes")]
    NonMinimalVariableByteInteger,
    /// The packet type is 0, or 15 in MQTT 3.1 and 3.1.1, both reserved (section 2.1.2).
    #[error("reserved packet type {0}")]
    ReservedPacketType(u8),
    /// The low four bits of the first byte differ from the value the packet type
    /// requires: 0b0010 for PUBREL, SUBSCRIBE and UNSUBSCRIBE, 0 for the others
    /// [MQTT-2.1.3-1].
    #[error("invalid fixed header flags {flags:#06b} for {packet_type:?}")]
    InvalidFixedHeaderFlags {
        /// Type of the packet.
        packet_type: PacketType,
        /// The four flag bits received.
        flags: u8,
    },
    /// This side of the connection never receives this packet type (section 2.1.2).
    /// A client does not receive CONNECT, SUBSCRIBE, UNSUBSCRIBE or PINGREQ. A server
    /// does not receive CONNACK, SUBACK, UNSUBACK or PINGRESP. An MQTT 3.1.1 client
    /// does not receive DISCONNECT.
    #[error("{packet_type:?} is not sent in this direction")]
    UnexpectedPacketType {
        /// Type of the packet.
        packet_type: PacketType,
    },
    /// A server received a packet other than CONNECT before CONNECT [MQTT-3.1.0-1].
    #[error("first packet is {packet_type:?}, not CONNECT")]
    FirstPacketNotConnect {
        /// Type of the packet received first.
        packet_type: PacketType,
    },
    /// A server received a second CONNECT on one connection [MQTT-3.1.0-2].
    #[error("second CONNECT on one connection")]
    SecondConnect,
    /// The remaining length ends before the packet's content does.
    #[error("{packet_type:?} ends before its content is complete")]
    Truncated {
        /// Type of the packet.
        packet_type: PacketType,
    },
    /// The remaining length is longer than the packet's content.
    #[error("{packet_type:?} has {extra} bytes after its content")]
    TrailingBytes {
        /// Type of the packet.
        packet_type: PacketType,
        /// Number of bytes left over.
        extra: usize,
    },
    /// PUBLISH with both QoS bits set [MQTT-3.3.1-4].
    #[error("PUBLISH with QoS 3")]
    InvalidQoS,
    /// Packet identifier 0 where a non-zero identifier is required [MQTT-2.2.1-3].
    #[error("{packet_type:?} has packet identifier 0")]
    ZeroPacketId {
        /// Type of the packet.
        packet_type: PacketType,
    },
    /// A string is not valid UTF-8 [MQTT-1.5.4-1].
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    /// A string contains U+0000 [MQTT-1.5.4-2].
    #[error("string contains the null character U+0000")]
    NullCharacter,
    /// A string contains a control character (U+0001 to U+001F, U+007F to U+009F) or a
    /// Unicode noncharacter, which the receiver may treat as malformed (MQTT 5.0
    /// section 1.5.4).
    #[error("string contains the disallowed character {0:?}")]
    DisallowedCharacter(char),
    /// A property identifier that MQTT 5.0 does not define (section 2.2.2.2).
    #[error("unknown property identifier {0:#04x}")]
    UnknownProperty(u32),
    /// A property that this packet may not carry: the specification calls a packet
    /// with such an identifier malformed (section 2.2.2.2).
    #[error("property {property:?} is not allowed on {packet_type:?}")]
    PropertyNotAllowed {
        /// Type of the packet, or CONNECT for will properties.
        packet_type: PacketType,
        /// The property received.
        property: super::properties::PropertyId,
    },
    /// A property that may appear at most once appeared twice (section 2.2.2.2).
    #[error("property {0:?} appears more than once")]
    DuplicateProperty(super::properties::PropertyId),
    /// A property value outside its allowed range, such as Receive Maximum 0, Maximum
    /// QoS 2 or a boolean byte above 1.
    #[error("invalid value {value} for property {property:?}")]
    InvalidPropertyValue {
        /// The property received.
        property: super::properties::PropertyId,
        /// The value received.
        value: u32,
    },
    /// A client sent a PUBLISH with a Subscription Identifier [MQTT-3.3.4-6].
    #[error("PUBLISH from a client carries a subscription identifier")]
    SubscriptionIdentifierFromClient,
    /// A Topic Alias of 0 [MQTT-3.3.2-8].
    #[error("topic alias 0")]
    ZeroTopicAlias,
    /// A PUBLISH with an empty topic name and no Topic Alias, or an empty topic name in
    /// MQTT 3.1.1 (MQTT 5.0 section 3.3.2.3.4, MQTT 3.1.1 section 4.7.3).
    #[error("PUBLISH has an empty topic name and no topic alias")]
    MissingTopic,
    /// A topic name, response topic or topic filter that breaks the topic rules,
    /// such as a wildcard in a topic name [MQTT-3.3.2-2].
    #[error("invalid topic: {0}")]
    InvalidTopic(super::types::InvalidValue),
    /// A Response Topic that is not a valid topic name, such as one with a wildcard
    /// [MQTT-3.3.2-14].
    #[error("invalid response topic: {0}")]
    InvalidResponseTopic(super::types::InvalidValue),
    /// A reason code this packet does not define.
    #[error("invalid reason code {code:#04x} for {packet_type:?}")]
    InvalidReasonCode {
        /// Type of the packet.
        packet_type: PacketType,
        /// The code received.
        code: u8,
    },
    /// A reason code only the other side may send, such as Disconnect with Will
    /// Message from a server (MQTT 5.0 sections 3.14.2.1 and 3.15.2.1).
    #[error("reason code {code:#04x} on {packet_type:?} is not sent in this direction")]
    ReasonCodeWrongDirection {
        /// Type of the packet.
        packet_type: PacketType,
        /// The code received.
        code: u8,
    },
    /// CONNACK acknowledge flags with any of bits 7 to 1 set [MQTT-3.2.2-1].
    #[error("CONNACK acknowledge flags {0:#04x} have reserved bits set")]
    ConnAckReservedFlags(u8),
    /// CONNACK with Session Present set and a non-zero return code (MQTT 3.1.1
    /// [MQTT-3.2.2-4], MQTT 5.0 [MQTT-3.2.2-6]).
    #[error("CONNACK reports a session present together with a failure")]
    SessionPresentOnFailure,
    /// SUBSCRIBE or UNSUBSCRIBE without any topic filter (MQTT 3.1.1 [MQTT-3.8.3-3],
    /// [MQTT-3.10.3-2]).
    #[error("{packet_type:?} contains no topic filter")]
    NoTopicFilters {
        /// Type of the packet.
        packet_type: PacketType,
    },
    /// SUBACK, or MQTT 5.0 UNSUBACK, without any reason code.
    #[error("{packet_type:?} contains no reason code")]
    NoReasonCodes {
        /// Type of the packet.
        packet_type: PacketType,
    },
    /// Subscription options with reserved bits set, or with QoS 3 (MQTT 3.1.1
    /// [MQTT-3.8.3-4], MQTT 5.0 [MQTT-3.8.3-5]).
    #[error("subscription options {0:#04x} have reserved bits set")]
    InvalidSubscriptionOptions(u8),
    /// Retain Handling 3 in subscription options (MQTT 5.0 section 3.8.3.1).
    #[error("retain handling 3 is reserved")]
    InvalidRetainHandling,
    /// No Local on a shared subscription [MQTT-3.8.3-4].
    #[error("no local is set on a shared subscription")]
    NoLocalOnSharedSubscription,
    /// CONNECT with a protocol name or level this codec does not speak (section 3.1.2.1
    /// and 3.1.2.2).
    #[error("unsupported protocol {name:?} level {level}")]
    UnsupportedProtocol {
        /// Protocol name received.
        name: String,
        /// Protocol level received.
        level: u8,
    },
    /// CONNECT flags with the reserved bit 0 set [MQTT-3.1.2-3].
    #[error("CONNECT flags have the reserved bit set")]
    ConnectReservedFlag,
    /// CONNECT with Will QoS or Will Retain set but no Will Flag (MQTT 5.0
    /// [MQTT-3.1.2-11] and [MQTT-3.1.2-13]).
    #[error("CONNECT has will QoS or will retain without a will")]
    WillFlagsWithoutWill,
    /// CONNECT with Will QoS 3 [MQTT-3.1.2-12].
    #[error("CONNECT has will QoS 3")]
    InvalidWillQoS,
    /// CONNECT with a password but no user name in MQTT 3.1 and 3.1.1 [MQTT-3.1.2-22].
    #[error("CONNECT has a password without a user name")]
    PasswordWithoutUsername,
    /// A server sent a Session Expiry Interval on DISCONNECT [MQTT-3.14.2-2].
    #[error("server DISCONNECT carries a session expiry interval")]
    SessionExpiryFromServer,
}

impl Violation {
    /// Returns the MQTT 5.0 reason code a DISCONNECT reporting this violation carries:
    /// Malformed Packet for what cannot be parsed as the specification describes,
    /// Protocol Error for well-formed packets that break a rule, Topic Alias Invalid
    /// for alias 0.
    #[must_use]
    pub fn reason_code(&self) -> DisconnectReason {
        match self {
            Self::VariableByteIntegerTooLong
            | Self::NonMinimalVariableByteInteger
            | Self::ReservedPacketType(_)
            | Self::InvalidFixedHeaderFlags { .. }
            | Self::Truncated { .. }
            | Self::TrailingBytes { .. }
            | Self::InvalidQoS
            | Self::InvalidUtf8
            | Self::NullCharacter
            | Self::DisallowedCharacter(_)
            | Self::UnknownProperty(_)
            | Self::PropertyNotAllowed { .. }
            | Self::InvalidTopic(_)
            | Self::InvalidReasonCode { .. }
            | Self::ConnAckReservedFlags(_)
            | Self::InvalidSubscriptionOptions(_)
            | Self::ConnectReservedFlag
            | Self::WillFlagsWithoutWill
            | Self::InvalidWillQoS
            | Self::PasswordWithoutUsername => DisconnectReason::MalformedPacket,
            Self::ZeroTopicAlias => DisconnectReason::TopicAliasInvalid,
            Self::UnexpectedPacketType { .. }
            | Self::FirstPacketNotConnect { .. }
            | Self::SecondConnect
            | Self::ZeroPacketId { .. }
            | Self::DuplicateProperty(_)
            | Self::InvalidPropertyValue { .. }
            | Self::MissingTopic
            | Self::InvalidResponseTopic(_)
            | Self::ReasonCodeWrongDirection { .. }
            | Self::SessionPresentOnFailure
            | Self::NoTopicFilters { .. }
            | Self::NoReasonCodes { .. }
            | Self::InvalidRetainHandling
            | Self::NoLocalOnSharedSubscription
            | Self::UnsupportedProtocol { .. }
            | Self::SessionExpiryFromServer
            | Self::SubscriptionIdentifierFromClient => DisconnectReason::ProtocolError,
        }
    }

    /// Returns the conformance id of the broken rule, when the specification gives one.
    /// Ids are those of MQTT 5.0 unless the rule exists only in 3.1.1.
    #[must_use]
    pub fn rule(&self) -> Option<&'static str> {
        let id = match self {
            Self::NonMinimalVariableByteInteger => "MQTT-1.5.5-1",
            Self::InvalidFixedHeaderFlags { .. } => "MQTT-2.1.3-1",
            Self::FirstPacketNotConnect { .. } => "MQTT-3.1.0-1",
            Self::SecondConnect => "MQTT-3.1.0-2",
            Self::InvalidQoS => "MQTT-3.3.1-4",
            Self::ZeroPacketId { .. } => "MQTT-2.2.1-3",
            Self::InvalidUtf8 => "MQTT-1.5.4-1",
            Self::NullCharacter => "MQTT-1.5.4-2",
            Self::ZeroTopicAlias => "MQTT-3.3.2-8",
            Self::SubscriptionIdentifierFromClient => "MQTT-3.3.4-6",
            Self::InvalidTopic(_) => "MQTT-3.3.2-2",
            Self::InvalidResponseTopic(_) => "MQTT-3.3.2-14",
            Self::ConnAckReservedFlags(_) => "MQTT-3.2.2-1",
            Self::SessionPresentOnFailure => "MQTT-3.2.2-6",
            Self::NoTopicFilters {
                packet_type: PacketType::Unsubscribe,
            } => "MQTT-3.10.3-2",
            Self::NoTopicFilters { .. } => "MQTT-3.8.3-2",
            Self::InvalidSubscriptionOptions(_) => "MQTT-3.8.3-5",
            Self::NoLocalOnSharedSubscription => "MQTT-3.8.3-4",
            Self::ConnectReservedFlag => "MQTT-3.1.2-3",
            Self::WillFlagsWithoutWill => "MQTT-3.1.2-11",
            Self::InvalidWillQoS => "MQTT-3.1.2-12",
            Self::PasswordWithoutUsername => "MQTT-3.1.2-22",
            Self::SessionExpiryFromServer => "MQTT-3.14.2-2",
            _ => return None,
        };
        Some(id)
    }
}

/// A packet that cannot be encoded as requested.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoded packet would exceed `max` bytes, or the protocol's limit of
    /// 268,435,455 bytes of remaining length; nothing was written.
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} bytes")]
    PacketTooLarge {
        /// Total size in bytes the packet would have, fixed header included.
        size: usize,
        /// The limit that applied.
        max: u32,
    },
    /// The packet, or a value in it, has no encoding in this protocol version, such as
    /// properties or a failure reason code in MQTT 3.1.1, or AUTH before MQTT 5.0.
    #[error("{what} cannot be encoded in {version:?}")]
    NotInVersion {
        /// Description of the value the version cannot carry.
        what: &'static str,
        /// The version requested.
        version: ProtocolVersion,
    },
    /// The packet's fields contradict each other or a protocol rule, such as a
    /// SUBSCRIBE without filters or a PUBLISH without topic name and topic alias.
    #[error("invalid packet: {0}")]
    InvalidPacket(&'static str),
    /// A string or binary field is longer than its 2-byte length prefix allows.
    #[error("{field} of {len} bytes is longer than 65535 bytes")]
    FieldTooLong {
        /// Name of the field.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// A string contains a character the decoder rejects: U+0000, a control character
    /// or a Unicode noncharacter (section 1.5.4).
    #[error("{field} contains the disallowed character {character:?}")]
    DisallowedCharacter {
        /// Name of the field.
        field: &'static str,
        /// The character.
        character: char,
    },
    /// A property this packet may not carry, or a property value outside its range.
    #[error("property {property:?} is invalid on {packet_type:?}: {problem}")]
    InvalidProperty {
        /// Type of the packet, or CONNECT for will properties.
        packet_type: PacketType,
        /// The property.
        property: super::properties::PropertyId,
        /// Description of the problem.
        problem: &'static str,
    },
}
