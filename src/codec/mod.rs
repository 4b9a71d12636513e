//! MQTT 3.1, 3.1.1 and 5.0 packets on `bytes`: the packet model, validated values,
//! topic matching, and a streaming decoder and encoder.
//!
//! This layer is sans-IO: it never touches a socket, a timer, a clock or actix. It
//! reads from and writes to caller-owned buffers only.

mod packet;
mod properties;
mod reason;
mod topic;
mod types;

pub use packet::{
    Auth, ConnAck, Connect, Delivery, Disconnect, LastWill, Packet, PacketType, PubAck, PubComp,
    PubRec, PubRel, Publish, SubAck, Subscribe, UnsubAck, Unsubscribe,
};
pub use properties::{PayloadFormat, Properties, PropertyId};
pub use reason::{
    AuthReason, ConnectReason, DisconnectReason, PubAckReason, PubCompReason, SubAckReason,
    UnsubAckReason,
};
pub use topic::{TopicFilter, TopicName};
pub use types::{
    ClientId, InvalidValue, PacketId, ProtocolVersion, QoS, RetainHandling, SubscriptionOptions,
};
