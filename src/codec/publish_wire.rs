//! Layout of PUBLISH (section 3.3) and of its acknowledgements PUBACK, PUBREC, PUBREL
//! and PUBCOMP (sections 3.4 to 3.7), in both directions.
//!
//! PUBLISH is the hot path: decoding copies no payload and allocates nothing for a
//! packet without properties; encoding writes straight into the reserved buffer.

use bytes::{BufMut, BytesMut};
use bytestring::ByteString;

use super::control_wire::Sender;
use super::encoder::{checked_total, Sizes};
use super::error::{DecodeError, EncodeError, Violation};
use super::packet::{Delivery, Packet, PacketType, PubAck, PubComp, PubRec, PubRel, Publish};
use super::properties::{BoxedProperties, Properties};
use super::property_wire::{
    has_properties, measure_properties, put_properties, read_properties_into, section_len,
    PropertyContext,
};
use super::topic::{is_plain_topic_name, TopicName};
use super::types::{PacketId, ProtocolVersion};
use super::wire::{put_prefixed, put_variable_byte_integer, value_violation, Reader};

/// Decodes a PUBLISH body; `flags` are the low four bits of the fixed header, already
/// checked for QoS 3. Returns the decoder's result type so the packet is built where
/// the caller receives it.
#[inline]
pub(crate) fn decode_publish(
    mut reader: Reader,
    flags: u8,
    version: ProtocolVersion,
    sender: Sender,
) -> Result<Option<Packet>, DecodeError> {
    let qos_bits = (flags >> 1) & 0b11;
    let topic = reader.binary()?;
    let plain_topic = is_plain_topic_name(&topic);
    let topic = ByteString::try_from(topic).map_err(|_| Violation::InvalidUtf8)?;
    let delivery = match qos_bits {
        0 => Delivery::AtMostOnce,
        1 => Delivery::AtLeastOnce(reader.packet_id()?),
        _ => Delivery::ExactlyOnce(reader.packet_id()?),
    };
    // DUP must be 0 on QoS 0 [MQTT-3.3.1-2], but clients such as Mosquitto's accept
    // such a packet, so the flag is dropped instead of closing the connection.
    let dup = flags & 0b1000 != 0 && qos_bits != 0;
    let retain = flags & 1 != 0;

    // The common packet has a plain topic and no properties (a property length of 0 is
    // the single byte 0), so nothing is left to check. The packet is built in place:
    // moving it, `Properties` and all, would cost more than parsing it.
    let no_properties = !version.is_v5() || reader.peek_u8() == Some(0);
    if !plain_topic || !no_properties {
        let publish = decode_publish_rest(reader, topic, version, sender)?;
        return Ok(Some(Packet::Publish(Publish {
            dup,
            delivery,
            retain,
            ..publish
        })));
    }
    if version.is_v5() {
        reader.skip(1);
    }
    Ok(Some(Packet::Publish(Publish {
        dup,
        delivery,
        retain,
        topic: Some(TopicName::from_plain(topic)),
        properties: BoxedProperties::default(),
        payload: reader.take_rest(),
    })))
}

/// Decodes what follows the packet identifier of a PUBLISH that has properties or a
/// topic that needs the full topic checks. `dup`, `delivery` and `retain` of the
/// result are placeholders the caller replaces.
#[inline(never)]
fn decode_publish_rest(
    mut reader: Reader,
    topic: ByteString,
    version: ProtocolVersion,
    sender: Sender,
) -> Result<Publish, Violation> {
    let mut properties = Properties::default();
    if version.is_v5() {
        read_properties_into(&mut reader, PropertyContext::Publish, &mut properties)?;
    }
    if sender == Sender::Client && !properties.subscription_identifiers.is_empty() {
        return Err(Violation::SubscriptionIdentifierFromClient);
    }

    // An empty topic name stands for the one a Topic Alias maps to (MQTT 5.0 section
    // 3.3.2.3.4). Without an alias, or before 5.0, the topic is missing.
    let topic = if topic.is_empty() {
        if properties.topic_alias.is_none() {
            return Err(Violation::MissingTopic);
        }
        None
    } else {
        let topic = TopicName::try_from(topic)
            .map_err(|error| value_violation(error, Violation::InvalidTopic))?;
        Some(topic)
    };
    Ok(Publish {
        dup: false,
        delivery: Delivery::AtMostOnce,
        retain: false,
        topic,
        properties: properties.into(),
        payload: reader.take_rest(),
    })
}

pub(crate) fn measure_publish(
    publish: &Publish,
    version: ProtocolVersion,
) -> Result<Sizes, EncodeError> {
    if publish.dup && publish.delivery == Delivery::AtMostOnce {
        return Err(EncodeError::InvalidPacket("DUP set on a QoS 0 PUBLISH"));
    }
    let topic_len = match &publish.topic {
        Some(topic) => topic.as_str().len(),
        None if !version.is_v5() => {
            return Err(EncodeError::NotInVersion {
                what: "PUBLISH without topic name",
                version,
            })
        }
        None if publish.properties.topic_alias.is_none() => {
            return Err(EncodeError::InvalidPacket(
                "PUBLISH without topic name needs a topic alias",
            ))
        }
        None => 0,
    };
    let packet_id_len = if publish.delivery == Delivery::AtMostOnce {
        0
    } else {
        2
    };
    let properties = measure_properties(
        &publish.properties,
        version,
        PropertyContext::Publish,
        PacketType::Publish,
    )?;
    Ok(Sizes::new(
        2 + topic_len + packet_id_len + section_len(properties, version) + publish.payload.len(),
        properties,
    ))
}

pub(crate) fn put_publish(
    publish: &Publish,
    version: ProtocolVersion,
    sizes: &Sizes,
    dst: &mut BytesMut,
) {
    let topic = publish.topic.as_ref().map_or("", TopicName::as_str);
    put_prefixed(dst, topic.as_bytes());
    if let Some(packet_id) = publish.delivery.packet_id() {
        dst.put_u16(packet_id.get());
    }
    if version.is_v5() {
        put_properties(dst, &publish.properties, sizes.properties);
    }
    dst.put_slice(&publish.payload);
}

/// Appends the fixed header and the topic length of a PUBLISH of 16 KiB or more, out
/// of line to leave the compiler's inlining budget to the common sizes.
#[inline(never)]
fn put_long_header(dst: &mut BytesMut, first_byte: u8, remaining: usize, topic_len: [u8; 2]) {
    dst.put_u8(first_byte);
    put_variable_byte_integer(dst, remaining as u32);
    dst.put_slice(&topic_len);
}

/// Returns `true` for the common PUBLISH that [`encode_simple_publish`] encodes: a
/// topic name, no properties, and no DUP on QoS 0. Such a packet passes every check
/// of [`measure_publish`] except the size limit.
#[inline]
pub(crate) fn is_simple_publish(publish: &Publish) -> bool {
    publish.topic.is_some()
        && !(publish.dup && publish.delivery == Delivery::AtMostOnce)
        && !has_properties(&publish.properties)
}

/// Encodes a PUBLISH for which [`is_simple_publish`] holds, with the layout of
/// [`put_publish`] but fewer and larger writes, because this path carries most
/// messages.
#[allow(clippy::inline_always)] // The call alone costs a tenth of a small PUBLISH.
#[inline(always)]
pub(crate) fn encode_simple_publish(
    publish: &Publish,
    version: ProtocolVersion,
    max_packet_size: u32,
    dst: &mut BytesMut,
) -> Result<(), EncodeError> {
    let topic = publish
        .topic
        .as_ref()
        .map_or("", TopicName::as_str)
        .as_bytes();
    let packet_id = match publish.delivery {
        Delivery::AtMostOnce => None,
        Delivery::AtLeastOnce(packet_id) | Delivery::ExactlyOnce(packet_id) => Some(packet_id),
    };
    let packet_id_len = if packet_id.is_some() { 2 } else { 0 };
    // An empty MQTT 5.0 property list is its length byte, 0.
    let properties_len = usize::from(version.is_v5());
    let remaining = 2 + topic.len() + packet_id_len + properties_len + publish.payload.len();
    let total = checked_total(remaining, max_packet_size)?;
    dst.reserve(total);

    let first_byte = (PacketType::Publish as u8) << 4
        | u8::from(publish.dup) << 3
        | publish.delivery.qos().level() << 1
        | u8::from(publish.retain);
    let [topic_len_high, topic_len_low] = (topic.len() as u16).to_be_bytes();
    // The fixed header and the topic length go out in one write when the remaining
    // length takes one or two bytes (MQTT 5.0 section 1.5.5).
    let topic_len = [topic_len_high, topic_len_low];
    match remaining {
        0..=127 => dst.put_slice(&[first_byte, remaining as u8, topic_len_high, topic_len_low]),
        128..=16_383 => dst.put_slice(&[
            first_byte,
            remaining as u8 | 0x80,
            (remaining >> 7) as u8,
            topic_len_high,
            topic_len_low,
        ]),
        _ => put_long_header(dst, first_byte, remaining, topic_len),
    }
    dst.put_slice(topic);
    match (packet_id, version.is_v5()) {
        (Some(packet_id), true) => {
            let [high, low] = packet_id.get().to_be_bytes();
            dst.put_slice(&[high, low, 0]);
        }
        (Some(packet_id), false) => dst.put_u16(packet_id.get()),
        (None, true) => dst.put_u8(0),
        (None, false) => {}
    }
    dst.put_slice(&publish.payload);
    Ok(())
}

/// Access to the fields PUBACK, PUBREC, PUBREL and PUBCOMP share, so that one
/// function encodes and decodes all four.
pub(crate) trait Acknowledgement: Sized {
    const PACKET_TYPE: PacketType;

    fn packet_id(&self) -> PacketId;
    fn code(&self) -> u8;
    fn properties(&self) -> &BoxedProperties;

    /// Returns the packet identifier when the packet is Success without properties,
    /// which every version encodes as just that identifier (MQTT 5.0 section 3.4.2.1).
    fn short_form(&self) -> Option<PacketId> {
        (self.code() == 0 && self.properties().is_empty()).then(|| self.packet_id())
    }

    /// Builds the packet, failing when `code` is not one of its reason codes.
    fn from_parts(
        packet_id: PacketId,
        code: u8,
        properties: BoxedProperties,
    ) -> Result<Self, Violation>;
}

macro_rules! impl_acknowledgement {
    ($($packet:ident),+) => {$(
        impl Acknowledgement for $packet {
            const PACKET_TYPE: PacketType = PacketType::$packet;

            fn packet_id(&self) -> PacketId {
                self.packet_id
            }

            fn code(&self) -> u8 {
                self.reason.code()
            }

            fn properties(&self) -> &BoxedProperties {
                &self.properties
            }

            fn from_parts(packet_id: PacketId, code: u8, properties: BoxedProperties) -> Result<Self, Violation> {
                let reason = code.try_into().map_err(|code| Violation::InvalidReasonCode {
                    packet_type: Self::PACKET_TYPE,
                    code,
                })?;
                Ok(Self {
                    packet_id,
                    reason,
                    properties,
                })
            }
        }
    )+};
}

impl_acknowledgement!(PubAck, PubRec, PubRel, PubComp);

/// Decodes the body of PUBACK, PUBREC, PUBREL or PUBCOMP. In MQTT 5.0 the reason code
/// is absent when the remaining length is 2 (Success), and the property length when
/// it is 3 (MQTT 5.0 section 3.4.2.1).
pub(crate) fn decode_acknowledgement<A: Acknowledgement>(
    mut reader: Reader,
    version: ProtocolVersion,
) -> Result<A, Violation> {
    let packet_id = reader.packet_id()?;
    let mut code = 0;
    // Most acknowledgements carry no properties, and 3.1.1 ones never do, so the
    // large `Properties` value is only built when some follow.
    let mut properties = BoxedProperties::default();
    if version.is_v5() && !reader.is_empty() {
        code = reader.u8()?;
        if !reader.is_empty() {
            let mut read = Properties::default();
            read_properties_into(&mut reader, PropertyContext::Acknowledgement, &mut read)?;
            properties = read.into();
        }
    }
    reader.finish()?;
    A::from_parts(packet_id, code, properties)
}

/// Checks an acknowledgement: MQTT 3.1.1 carries neither a failure code nor
/// properties.
pub(crate) fn measure_acknowledgement<A: Acknowledgement>(
    ack: &A,
    version: ProtocolVersion,
) -> Result<Sizes, EncodeError> {
    let code = ack.code();
    if !version.is_v5() && code != 0 {
        return Err(EncodeError::NotInVersion {
            what: "a reason code other than Success",
            version,
        });
    }
    let properties = measure_properties(
        ack.properties(),
        version,
        PropertyContext::Acknowledgement,
        A::PACKET_TYPE,
    )?;
    // The shortest form: no reason code for Success without properties, no property
    // length without properties (MQTT 5.0 section 3.4.2.1).
    let remaining = if !version.is_v5() || (code == 0 && properties == 0) {
        2
    } else if properties == 0 {
        3
    } else {
        3 + section_len(properties, version)
    };
    Ok(Sizes::new(remaining, properties))
}

pub(crate) fn put_acknowledgement<A: Acknowledgement>(
    ack: &A,
    version: ProtocolVersion,
    sizes: &Sizes,
    dst: &mut BytesMut,
) {
    dst.put_u16(ack.packet_id().get());
    if sizes.remaining > 2 {
        dst.put_u8(ack.code());
    }
    if sizes.remaining > 3 && version.is_v5() {
        put_properties(dst, ack.properties(), sizes.properties);
    }
}
