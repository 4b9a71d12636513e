//! MQTT 3.1, 3.1.1 and 5.0 packets on `bytes`: the packet model, validated values,
//! topic matching, and a streaming decoder and encoder.
//!
//! This layer is sans-IO: it never touches a socket, a timer, a clock or actix. It
//! reads from and writes to caller-owned buffers only.

mod connect_wire;
mod control_wire;
mod decoder;
mod encoder;
mod error;
mod packet;
mod properties;
mod property_wire;
mod publish_wire;
mod reason;
mod subscribe_wire;
mod topic;
mod types;
mod wire;

pub use decoder::Decoder;
pub use encoder::{encode, encoded_len};
pub use error::{DecodeError, EncodeError, Violation, DEFAULT_MAX_PACKET_SIZE};

pub use packet::{
    Auth, ConnAck, Connect, Delivery, Disconnect, LastWill, Packet, PacketType, PubAck, PubComp,
    PubRec, PubRel, Publish, SubAck, Subscribe, UnsubAck, Unsubscribe,
};
pub use properties::{BoxedProperties, PayloadFormat, Properties, PropertyId};
pub use reason::{
    AuthReason, ConnectReason, DisconnectReason, PubAckReason, PubCompReason, SubAckReason,
    UnsubAckReason,
};
pub use topic::{TopicFilter, TopicName};
pub use types::{
    ClientId, InvalidValue, PacketId, ProtocolVersion, QoS, RetainHandling, SubscriptionOptions,
};
