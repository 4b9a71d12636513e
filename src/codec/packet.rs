//! The packet model: one type per MQTT control packet, shared by every protocol version.
//!
//! Version differences (3.1 and 3.1.1 have no properties and fewer reason codes) are
//! handled by the encoder and decoder, not by separate types. This module holds data
//! only; it does not encode, decode or do I/O.

use bytes::Bytes;
use bytestring::ByteString;

use super::properties::{BoxedProperties, Properties};
use super::reason::{
    AuthReason, ConnectReason, DisconnectReason, PubAckReason, PubCompReason, SubAckReason,
    UnsubAckReason,
};
use super::topic::{TopicFilter, TopicName};
use super::types::{ClientId, PacketId, ProtocolVersion, QoS, SubscriptionOptions};

/// Any MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)] // Each variant is the packet of the same name.
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(PubAck),
    PubRec(PubRec),
    PubRel(PubRel),
    PubComp(PubComp),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

/// Fixed-header packet type (the high four bits of the first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)] // Each variant is the packet type of the same name.
pub enum PacketType {
    Connect = 1,
    ConnAck = 2,
    Publish = 3,
    PubAck = 4,
    PubRec = 5,
    PubRel = 6,
    PubComp = 7,
    Subscribe = 8,
    SubAck = 9,
    Unsubscribe = 10,
    UnsubAck = 11,
    PingReq = 12,
    PingResp = 13,
    Disconnect = 14,
    Auth = 15,
}

impl Packet {
    /// Returns the fixed-header type of this packet.
    #[must_use]
    pub fn packet_type(&self) -> PacketType {
        match self {
            Self::Connect(_) => PacketType::Connect,
            Self::ConnAck(_) => PacketType::ConnAck,
            Self::Publish(_) => PacketType::Publish,
            Self::PubAck(_) => PacketType::PubAck,
            Self::PubRec(_) => PacketType::PubRec,
            Self::PubRel(_) => PacketType::PubRel,
            Self::PubComp(_) => PacketType::PubComp,
            Self::Subscribe(_) => PacketType::Subscribe,
            Self::SubAck(_) => PacketType::SubAck,
            Self::Unsubscribe(_) => PacketType::Unsubscribe,
            Self::UnsubAck(_) => PacketType::UnsubAck,
            Self::PingReq => PacketType::PingReq,
            Self::PingResp => PacketType::PingResp,
            Self::Disconnect(_) => PacketType::Disconnect,
            Self::Auth(_) => PacketType::Auth,
        }
    }
}

/// CONNECT: the first packet a client sends (section 3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Protocol name and level; 3.1 uses the name "MQIsdp".
    pub protocol: ProtocolVersion,
    /// Clean start (v5) or clean session (3.1.1).
    pub clean_start: bool,
    /// Keep-alive in seconds; 0 turns the mechanism off.
    pub keep_alive: u16,
    /// Client identifier, possibly empty.
    pub client_id: ClientId,
    /// Last will, published by the server if the connection ends abnormally.
    pub will: Option<LastWill>,
    /// User name, if any.
    pub username: Option<ByteString>,
    /// Password, if any. In 3.1.1 a password requires a user name [MQTT-3.1.2-22].
    pub password: Option<Bytes>,
    /// CONNECT properties (v5).
    pub properties: Properties,
}

/// Last will of a CONNECT (section 3.1.2.5 and 3.1.3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    /// Topic the will is published to.
    pub topic: TopicName,
    /// Will payload.
    pub payload: Bytes,
    /// QoS of the will message.
    pub qos: QoS,
    /// Whether the will is retained.
    pub retain: bool,
    /// Will properties (v5).
    pub properties: Properties,
}

/// CONNACK: the server's answer to CONNECT (section 3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    /// Whether the server resumed a stored session.
    pub session_present: bool,
    /// Reason code (v5) or return code mapped onto its v5 name (3.1.1).
    pub reason: ConnectReason,
    /// CONNACK properties (v5).
    pub properties: BoxedProperties,
}

/// PUBLISH: an application message (section 3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Whether this may be a redelivery; always `false` for QoS 0 [MQTT-3.3.1-2].
    pub dup: bool,
    /// QoS and, for QoS 1 and 2, the packet identifier.
    pub delivery: Delivery,
    /// Whether the message is retained.
    pub retain: bool,
    /// Topic name. `None` is a zero-length topic name, allowed in v5 only together with a
    /// Topic Alias property [MQTT-3.3.2-8].
    pub topic: Option<TopicName>,
    /// PUBLISH properties (v5).
    pub properties: BoxedProperties,
    /// Application payload; on decode a slice of the read buffer, not a copy.
    pub payload: Bytes,
}

/// QoS of a PUBLISH together with the packet identifier that QoS 1 and 2 require.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Delivery {
    /// QoS 0: no packet identifier [MQTT-2.2.1-2].
    AtMostOnce,
    /// QoS 1 with its packet identifier.
    AtLeastOnce(PacketId),
    /// QoS 2 with its packet identifier.
    ExactlyOnce(PacketId),
}

impl Delivery {
    /// Returns the QoS level.
    #[must_use]
    pub fn qos(self) -> QoS {
        match self {
            Self::AtMostOnce => QoS::AtMostOnce,
            Self::AtLeastOnce(_) => QoS::AtLeastOnce,
            Self::ExactlyOnce(_) => QoS::ExactlyOnce,
        }
    }

    /// Returns the packet identifier, `None` for QoS 0.
    #[must_use]
    pub fn packet_id(self) -> Option<PacketId> {
        match self {
            Self::AtMostOnce => None,
            Self::AtLeastOnce(id) | Self::ExactlyOnce(id) => Some(id),
        }
    }
}

/// PUBACK: acknowledges a QoS 1 PUBLISH (section 3.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubAck {
    /// Identifier of the acknowledged PUBLISH.
    pub packet_id: PacketId,
    /// Reason code; always `Success` in 3.1.1.
    pub reason: PubAckReason,
    /// Properties (v5): reason string and user properties.
    pub properties: BoxedProperties,
}

/// PUBREC: first answer to a QoS 2 PUBLISH (section 3.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubRec {
    /// Identifier of the received PUBLISH.
    pub packet_id: PacketId,
    /// Reason code; always `Success` in 3.1.1.
    pub reason: PubAckReason,
    /// Properties (v5): reason string and user properties.
    pub properties: BoxedProperties,
}

/// PUBREL: releases a QoS 2 message after PUBREC (section 3.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubRel {
    /// Identifier of the QoS 2 flow.
    pub packet_id: PacketId,
    /// Reason code; always `Success` in 3.1.1.
    pub reason: PubCompReason,
    /// Properties (v5): reason string and user properties.
    pub properties: BoxedProperties,
}

/// PUBCOMP: completes a QoS 2 flow (section 3.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubComp {
    /// Identifier of the QoS 2 flow.
    pub packet_id: PacketId,
    /// Reason code; always `Success` in 3.1.1.
    pub reason: PubCompReason,
    /// Properties (v5): reason string and user properties.
    pub properties: BoxedProperties,
}

/// SUBSCRIBE: asks for one or more subscriptions (section 3.8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet identifier, echoed by SUBACK.
    pub packet_id: PacketId,
    /// Topic filters with their options; at least one [MQTT-3.8.3-3].
    pub filters: Vec<(TopicFilter, SubscriptionOptions)>,
    /// Properties (v5): subscription identifier and user properties.
    pub properties: BoxedProperties,
}

/// SUBACK: answers SUBSCRIBE with one reason code per filter (section 3.9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// Identifier of the SUBSCRIBE answered.
    pub packet_id: PacketId,
    /// One code per filter, in the order of the SUBSCRIBE.
    pub reasons: Vec<SubAckReason>,
    /// Properties (v5): reason string and user properties.
    pub properties: BoxedProperties,
}

/// UNSUBSCRIBE: removes one or more subscriptions (section 3.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet identifier, echoed by UNSUBACK.
    pub packet_id: PacketId,
    /// Topic filters to remove; at least one [MQTT-3.10.3-2].
    pub filters: Vec<TopicFilter>,
    /// Properties (v5): user properties.
    pub properties: BoxedProperties,
}

/// UNSUBACK: answers UNSUBSCRIBE (section 3.11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    /// Identifier of the UNSUBSCRIBE answered.
    pub packet_id: PacketId,
    /// One code per filter (v5); empty in 3.1.1, which has no payload.
    pub reasons: Vec<UnsubAckReason>,
    /// Properties (v5): reason string and user properties.
    pub properties: BoxedProperties,
}

/// DISCONNECT: the last packet before a normal close (section 3.14). 3.1.1 has only
/// the client's empty form, decoded as `NormalDisconnection`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    /// Reason code (v5).
    pub reason: DisconnectReason,
    /// Properties (v5): session expiry, reason string, server reference, user properties.
    pub properties: BoxedProperties,
}

/// AUTH: one step of extended authentication, v5 only (section 3.15).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    /// Reason code.
    pub reason: AuthReason,
    /// Properties: authentication method and data, reason string, user properties.
    pub properties: BoxedProperties,
}
