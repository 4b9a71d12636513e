//! What can end a session, and why a single request can fail.
//!
//! [`ProtocolViolation`] names each rule the broker can break at the session level once,
//! with the MQTT 5.0 reason code the DISCONNECT reporting it carries; rules about the
//! bytes of one packet are the codec's [`DecodeError`]. Nothing here does I/O.

use crate::codec::{ConnectReason, DecodeError, DisconnectReason, PacketId, PacketType};

/// A rule of MQTT broken by the broker, found by the session or by the decoder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolViolation {
    /// The decoder rejected the bytes of a packet.
    #[error("invalid packet from broker")]
    Decode(#[from] DecodeError),
    /// The first packet from the broker was not CONNACK [MQTT-3.2.0-1].
    #[error("{0:?} received before CONNACK")]
    PacketBeforeConnAck(PacketType),
    /// A second CONNACK arrived on the same connection [MQTT-3.2.0-2].
    #[error("second CONNACK on one connection")]
    SecondConnAck,
    /// Session Present was set although this client asked for a clean start
    /// [MQTT-3.2.2-2] (3.1.1: [MQTT-3.2.2-1]).
    #[error("session present set in reply to a clean start")]
    SessionPresentOnCleanStart,
    /// Session Present was set although this client has no session state to resume.
    /// MQTT 5.0 requires the client to close the connection [MQTT-3.2.2-4]. This client
    /// does the same under 3.1.1, because the broker would go on with a session whose
    /// flows this client does not know.
    #[error("session present set although the client has no session state")]
    SessionPresentWithoutSessionState,
    /// The broker assigned a client identifier although this client sent a non-empty one;
    /// only an empty identifier may be replaced (MQTT 5.0 section 3.2.2.3.7).
    #[error("assigned client identifier in reply to a non-empty client identifier")]
    UnrequestedClientIdentifier,
    /// The broker sent a packet a client never receives, or one that needs a feature
    /// this client did not ask for (AUTH without an authentication method).
    #[error("unexpected {0:?} from broker")]
    UnexpectedPacket(PacketType),
    /// An acknowledgement names a packet identifier this client uses for another kind of
    /// flow, such as a PUBACK for a SUBSCRIBE or a PUBREC for a QoS 1 PUBLISH.
    #[error("{packet_type:?} for packet identifier {packet_id} in use by another flow")]
    AckForOtherFlow {
        /// Type of the acknowledgement.
        packet_type: PacketType,
        /// The identifier it named.
        packet_id: PacketId,
    },
    /// A SUBACK or UNSUBACK names a packet identifier with no SUBSCRIBE or UNSUBSCRIBE
    /// waiting for it.
    #[error("{packet_type:?} for unknown packet identifier {packet_id}")]
    UnknownPacketId {
        /// Type of the acknowledgement.
        packet_type: PacketType,
        /// The identifier it named.
        packet_id: PacketId,
    },
    /// The number of reason codes differs from the number of filters requested
    /// [MQTT-3.8.4-6] [MQTT-3.10.4-5].
    #[error("{packet_type:?} has {received} reason codes for {expected} filters")]
    ReasonCountMismatch {
        /// SUBACK or UNSUBACK.
        packet_type: PacketType,
        /// Number of filters in the request.
        expected: usize,
        /// Number of reason codes received.
        received: usize,
    },
    /// A PUBLISH with an empty topic name and no topic alias (MQTT 5.0 section
    /// 3.3.2.3.4).
    #[error("PUBLISH without topic name or topic alias")]
    MissingTopic,
    /// A topic alias of 0 or above the Topic Alias Maximum this client announced
    /// (MQTT 5.0 section 3.3.2.3.4).
    #[error("topic alias {alias} outside 1..={maximum}")]
    TopicAliasOutOfRange {
        /// The alias received.
        alias: u16,
        /// The Topic Alias Maximum this client announced.
        maximum: u16,
    },
    /// A PUBLISH with an empty topic name used an alias the broker never defined on this
    /// connection (MQTT 5.0 section 3.3.2.3.4).
    #[error("topic alias {0} used before it was defined")]
    UndefinedTopicAlias(u16),
    /// More unacknowledged QoS 1 and 2 PUBLISH packets arrived than the Receive Maximum
    /// this client announced (MQTT 5.0 section 4.9).
    #[error("more than {0} unacknowledged QoS 1 and 2 messages from broker")]
    ReceiveMaximumExceeded(u16),
    /// A QoS 1 or 2 PUBLISH reused a packet identifier whose earlier message this client
    /// has not acknowledged yet. A server must pick an unused identifier [MQTT-2.2.1-4]
    /// (3.1.1 section 2.3.1), and under v5 it must not resend a message on the same
    /// connection [MQTT-4.4.0-1]. Only a QoS 2 redelivery awaiting PUBREL is accepted.
    #[error("PUBLISH reused packet identifier {0} before it was acknowledged")]
    PacketIdInUse(PacketId),
    /// A packet was larger than the Maximum Packet Size this client announced (MQTT 5.0
    /// section 3.1.2.11.4).
    #[error("packet of {size} bytes exceeds the announced maximum packet size of {maximum} bytes")]
    PacketTooLarge {
        /// Size of the packet in bytes, as the codec encodes it.
        size: usize,
        /// The Maximum Packet Size this client announced.
        maximum: u32,
    },
}

impl ProtocolViolation {
    /// Returns the reason code of the DISCONNECT this client sends for the violation.
    #[must_use]
    pub fn reason_code(&self) -> DisconnectReason {
        match self {
            Self::Decode(error) => error.reason_code(),
            Self::TopicAliasOutOfRange { .. } => DisconnectReason::TopicAliasInvalid,
            Self::ReceiveMaximumExceeded(_) => DisconnectReason::ReceiveMaximumExceeded,
            Self::PacketTooLarge { .. } => DisconnectReason::PacketTooLarge,
            Self::PacketBeforeConnAck(_)
            | Self::SecondConnAck
            | Self::SessionPresentOnCleanStart
            | Self::SessionPresentWithoutSessionState
            | Self::UnrequestedClientIdentifier
            | Self::UnexpectedPacket(_)
            | Self::AckForOtherFlow { .. }
            | Self::UnknownPacketId { .. }
            | Self::ReasonCountMismatch { .. }
            | Self::MissingTopic
            | Self::UndefinedTopicAlias(_)
            | Self::PacketIdInUse(_) => DisconnectReason::ProtocolError,
        }
    }
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CloseReason {
    /// No CONNACK arrived before the connect timeout.
    #[error("no CONNACK before the connect timeout")]
    ConnectTimeout,
    /// The broker answered CONNECT with a failure reason code.
    #[error("connection refused by broker: {reason:?}")]
    ConnectRefused {
        /// The CONNACK reason code.
        reason: ConnectReason,
        /// The CONNACK reason string (v5), if any.
        reason_string: Option<String>,
        /// The CONNACK Server Reference (v5), the server to use instead, if any.
        server_reference: Option<String>,
    },
    /// No PINGRESP arrived in time after a PINGREQ.
    #[error("no PINGRESP before the keep-alive deadline")]
    KeepAliveTimeout,
    /// The broker broke a rule of the protocol.
    #[error("protocol violation by broker")]
    ProtocolViolation(#[source] ProtocolViolation),
    /// The broker sent DISCONNECT (v5).
    #[error("broker sent DISCONNECT: {reason:?}")]
    DisconnectedByBroker {
        /// The DISCONNECT reason code.
        reason: DisconnectReason,
        /// The DISCONNECT reason string, if any.
        reason_string: Option<String>,
        /// The DISCONNECT Server Reference, the server to use instead, if any.
        server_reference: Option<String>,
    },
    /// The application asked to disconnect.
    #[error("disconnect requested by the application")]
    Requested,
}

/// Why one request failed while the session itself goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The encoded packet exceeds the broker's Maximum Packet Size; nothing was sent.
    #[error("packet of {size} bytes exceeds the broker's maximum packet size of {max} bytes")]
    PacketTooLarge {
        /// Encoded size in bytes.
        size: usize,
        /// The broker's Maximum Packet Size.
        max: u32,
    },
    /// The request cannot be sent with this protocol version or to this broker, for the
    /// reason given; nothing was sent.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The publish waited in the queue for its whole Message Expiry Interval (v5), so it
    /// was dropped unsent.
    #[error("message expired after waiting {interval} s in the queue")]
    Expired {
        /// The Message Expiry Interval of the publish, in seconds.
        interval: u32,
    },
    /// The broker answered with a failure reason code.
    #[error("rejected by broker: {reason:?}")]
    Rejected {
        /// The failure reason code.
        reason: RejectReason,
        /// The reason string (v5), if any.
        reason_string: Option<String>,
    },
}

/// A failure reason code from the broker, by the packet that carried it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectReason {
    /// PUBACK or PUBREC failure for a published message.
    Publish(crate::codec::PubAckReason),
    /// SUBACK failure for every filter of a subscribe; the first filter's code.
    Subscribe(crate::codec::SubAckReason),
    /// UNSUBACK failure for every filter of an unsubscribe; the first filter's code.
    Unsubscribe(crate::codec::UnsubAckReason),
}

impl RejectReason {
    /// Returns the reason code byte.
    #[must_use]
    pub fn code(self) -> u8 {
        match self {
            Self::Publish(reason) => reason.code(),
            Self::Subscribe(reason) => reason.code(),
            Self::Unsubscribe(reason) => reason.code(),
        }
    }
}
