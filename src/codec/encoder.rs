//! The encoder: turns a [`Packet`] into bytes for one protocol version.
//!
//! Encoding is two passes over the packet. The first checks everything the version
//! and the protocol require and computes the exact size; only then is `dst` grown
//! once and written, so a rejected packet leaves `dst` untouched. Packet layouts
//! live in the `*_wire` modules; this module holds the dispatch and the fixed header.

use bytes::{BufMut, BytesMut};

use super::connect_wire::{measure_connack, measure_connect, put_connack, put_connect};
use super::control_wire::{measure_auth, measure_disconnect, put_auth, put_disconnect};
use super::error::EncodeError;
use super::packet::{
    Auth, ConnAck, Connect, Disconnect, Packet, PubAck, PubComp, PubRec, PubRel, Publish, SubAck,
    Subscribe, UnsubAck, Unsubscribe,
};
use super::publish_wire::{
    measure_acknowledgement, measure_publish, put_acknowledgement, put_publish,
};
use super::subscribe_wire::{
    measure_suback, measure_subscribe, measure_unsuback, measure_unsubscribe, put_suback,
    put_subscribe, put_unsuback, put_unsubscribe,
};
use super::types::{disallowed_character, ProtocolVersion};
use super::wire::{
    put_variable_byte_integer, variable_byte_integer_len, MAX_VARIABLE_BYTE_INTEGER,
};

/// Sizes found by the checking pass and reused by the writing pass.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Sizes {
    /// Remaining length: everything after the fixed header.
    pub(crate) remaining: usize,
    /// Length of the packet's property list, without its length prefix.
    pub(crate) properties: usize,
    /// Length of the will property list of a CONNECT, without its length prefix.
    pub(crate) will_properties: usize,
}

impl Sizes {
    /// Returns the sizes of a packet with one property list of `properties` bytes.
    pub(crate) fn new(remaining: usize, properties: usize) -> Self {
        Self {
            remaining,
            properties,
            will_properties: 0,
        }
    }
}

/// Encodes `packet` for `version` at the end of `dst`.
///
/// Fails without writing anything when the packet cannot be sent in `version`, breaks
/// a protocol rule, or would be larger than `max_packet_size` bytes in total (fixed
/// header included), which is the limit the peer announced.
pub fn encode(
    packet: &Packet,
    version: ProtocolVersion,
    max_packet_size: u32,
    dst: &mut BytesMut,
) -> Result<(), EncodeError> {
    let body = body(packet);
    let sizes = body.measure(version)?;
    let total = checked_total(sizes.remaining, max_packet_size)?;
    dst.reserve(total);
    dst.put_u8(first_byte(packet));
    put_variable_byte_integer(dst, sizes.remaining as u32);
    body.put(version, &sizes, dst);
    Ok(())
}

/// Returns the total encoded size of `packet` in bytes, fixed header included, after
/// the same checks as [`encode`] except the size limit.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> Result<usize, EncodeError> {
    let sizes = body(packet).measure(version)?;
    Ok(total_len(sizes.remaining))
}

fn total_len(remaining: usize) -> usize {
    let remaining_len = u32::try_from(remaining).map_or(4, variable_byte_integer_len);
    1 + remaining_len + remaining
}

/// Returns the total size, or the error for a packet above `max` or above what a
/// remaining length can express.
fn checked_total(remaining: usize, max: u32) -> Result<usize, EncodeError> {
    let size = total_len(remaining);
    let protocol_max = total_len(MAX_VARIABLE_BYTE_INTEGER as usize);
    let limit = (max as usize).min(protocol_max);
    if size > limit {
        return Err(EncodeError::PacketTooLarge {
            size,
            max: limit as u32,
        });
    }
    Ok(size)
}

/// Returns the first byte of the fixed header: packet type and flags (section 2.1.3).
fn first_byte(packet: &Packet) -> u8 {
    let flags = match packet {
        Packet::Publish(publish) => {
            u8::from(publish.dup) << 3
                | publish.delivery.qos().level() << 1
                | u8::from(publish.retain)
        }
        Packet::PubRel(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_) => 0b0010,
        _ => 0,
    };
    (packet.packet_type() as u8) << 4 | flags
}

/// The part of a packet after the fixed header, as each packet type lays it out.
pub(crate) trait WireBody {
    /// Checks the packet for `version` and returns its sizes.
    fn measure(&self, version: ProtocolVersion) -> Result<Sizes, EncodeError>;

    /// Appends the body; `sizes` come from [`WireBody::measure`] for the same version.
    fn put(&self, version: ProtocolVersion, sizes: &Sizes, dst: &mut BytesMut);
}

/// PINGREQ and PINGRESP: no body at all.
struct EmptyBody;

impl WireBody for EmptyBody {
    fn measure(&self, _version: ProtocolVersion) -> Result<Sizes, EncodeError> {
        Ok(Sizes::default())
    }

    fn put(&self, _version: ProtocolVersion, _sizes: &Sizes, _dst: &mut BytesMut) {}
}

/// Implements [`WireBody`] for packet types with their `measure` and `put` functions.
macro_rules! impl_wire_body {
    ($($packet:ty => $measure:path, $put:path;)+) => {$(
        impl WireBody for $packet {
            fn measure(&self, version: ProtocolVersion) -> Result<Sizes, EncodeError> {
                $measure(self, version)
            }

            fn put(&self, version: ProtocolVersion, sizes: &Sizes, dst: &mut BytesMut) {
                $put(self, version, sizes, dst);
            }
        }
    )+};
}

impl_wire_body! {
    Connect => measure_connect, put_connect;
    ConnAck => measure_connack, put_connack;
    Publish => measure_publish, put_publish;
    PubAck => measure_acknowledgement, put_acknowledgement;
    PubRec => measure_acknowledgement, put_acknowledgement;
    PubRel => measure_acknowledgement, put_acknowledgement;
    PubComp => measure_acknowledgement, put_acknowledgement;
    Subscribe => measure_subscribe, put_subscribe;
    SubAck => measure_suback, put_suback;
    Unsubscribe => measure_unsubscribe, put_unsubscribe;
    UnsubAck => measure_unsuback, put_unsuback;
    Disconnect => measure_disconnect, put_disconnect;
    Auth => measure_auth, put_auth;
}

fn body(packet: &Packet) -> &dyn WireBody {
    match packet {
        Packet::Connect(connect) => &**connect,
        Packet::ConnAck(connack) => connack,
        Packet::Publish(publish) => publish,
        Packet::PubAck(ack) => ack,
        Packet::PubRec(ack) => ack,
        Packet::PubRel(ack) => ack,
        Packet::PubComp(ack) => ack,
        Packet::Subscribe(subscribe) => subscribe,
        Packet::SubAck(suback) => suback,
        Packet::Unsubscribe(unsubscribe) => unsubscribe,
        Packet::UnsubAck(unsuback) => unsuback,
        Packet::PingReq | Packet::PingResp => &EmptyBody,
        Packet::Disconnect(disconnect) => disconnect,
        Packet::Auth(auth) => auth,
    }
}

/// Checks a string field the model stores unchecked (user name and the like) and
/// returns its encoded size, length prefix included.
pub(crate) fn string_field_len(field: &'static str, value: &str) -> Result<usize, EncodeError> {
    if let Some(character) = disallowed_character(value) {
        return Err(EncodeError::DisallowedCharacter { field, character });
    }
    binary_field_len(field, value.as_bytes())
}

/// Checks that a binary field fits its two-byte length prefix and returns its encoded
/// size, length prefix included.
pub(crate) fn binary_field_len(field: &'static str, value: &[u8]) -> Result<usize, EncodeError> {
    if value.len() > usize::from(u16::MAX) {
        return Err(EncodeError::FieldTooLong {
            field,
            len: value.len(),
        });
    }
    Ok(2 + value.len())
}
