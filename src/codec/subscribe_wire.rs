//! Layout of SUBSCRIBE, SUBACK, UNSUBSCRIBE and UNSUBACK (sections 3.8 to 3.11), in
//! both directions.

use bytes::{BufMut, BytesMut};

use super::encoder::Sizes;
use super::error::{EncodeError, Violation};
use super::packet::{PacketType, SubAck, Subscribe, UnsubAck, Unsubscribe};
use super::properties::Properties;
use super::property_wire::{
    measure_properties, put_properties, read_properties, section_len, PropertyContext,
};
use super::reason::{SubAckReason, UnsubAckReason};
use super::topic::TopicFilter;
use super::types::{ProtocolVersion, QoS, RetainHandling, SubscriptionOptions};
use super::wire::{put_prefixed, value_violation, Reader};

/// Reads the packet identifier and, in MQTT 5.0, the properties that start each of
/// these four packets.
fn read_header(
    reader: &mut Reader,
    version: ProtocolVersion,
    context: PropertyContext,
) -> Result<(super::types::PacketId, Properties), Violation> {
    let packet_id = reader.packet_id()?;
    let properties = if version.is_v5() {
        read_properties(reader, context)?
    } else {
        Properties::default()
    };
    Ok((packet_id, properties))
}

fn read_filter(reader: &mut Reader) -> Result<TopicFilter, Violation> {
    let string = reader.utf8()?;
    TopicFilter::try_from(string).map_err(|error| value_violation(error, Violation::InvalidTopic))
}

pub(crate) fn decode_subscribe(
    mut reader: Reader,
    version: ProtocolVersion,
) -> Result<Subscribe, Violation> {
    let (packet_id, properties) = read_header(&mut reader, version, PropertyContext::Subscribe)?;
    let mut filters = Vec::new();
    while !reader.is_empty() {
        let filter = read_filter(&mut reader)?;
        let options = parse_options(reader.u8()?, version)?;
        if options.no_local && filter.share_name().is_some() {
            return Err(Violation::NoLocalOnSharedSubscription);
        }
        filters.push((filter, options));
    }
    if filters.is_empty() {
        return Err(Violation::NoTopicFilters {
            packet_type: PacketType::Subscribe,
        });
    }
    Ok(Subscribe {
        packet_id,
        filters,
        properties: properties.into(),
    })
}

/// Parses a subscription options byte. MQTT 3.1.1 uses only the two QoS bits; MQTT 5.0
/// adds No Local, Retain As Published and Retain Handling; the rest is reserved.
fn parse_options(byte: u8, version: ProtocolVersion) -> Result<SubscriptionOptions, Violation> {
    let reserved = if version.is_v5() {
        0b1100_0000
    } else {
        0b1111_1100
    };
    if byte & reserved != 0 {
        return Err(Violation::InvalidSubscriptionOptions(byte));
    }
    let qos =
        QoS::try_from(byte & 0b11).map_err(|_| Violation::InvalidSubscriptionOptions(byte))?;
    let retain_handling = RetainHandling::try_from((byte >> 4) & 0b11)
        .map_err(|_| Violation::InvalidRetainHandling)?;
    Ok(SubscriptionOptions {
        qos,
        no_local: byte & 0b0100 != 0,
        retain_as_published: byte & 0b1000 != 0,
        retain_handling,
    })
}

fn options_byte(options: SubscriptionOptions) -> u8 {
    options.qos.level()
        | u8::from(options.no_local) << 2
        | u8::from(options.retain_as_published) << 3
        | (options.retain_handling as u8) << 4
}

pub(crate) fn measure_subscribe(
    subscribe: &Subscribe,
    version: ProtocolVersion,
) -> Result<Sizes, EncodeError> {
    if subscribe.filters.is_empty() {
        return Err(EncodeError::InvalidPacket(
            "SUBSCRIBE without topic filters",
        ));
    }
    let mut payload = 0;
    for (filter, options) in &subscribe.filters {
        if !version.is_v5() && *options != SubscriptionOptions::with_qos(options.qos) {
            return Err(EncodeError::NotInVersion {
                what: "subscription options other than QoS",
                version,
            });
        }
        if options.no_local && filter.share_name().is_some() {
            return Err(EncodeError::InvalidPacket(
                "No Local on a shared subscription",
            ));
        }
        payload += 2 + filter.as_str().len() + 1;
    }
    let properties = measure_properties(
        &subscribe.properties,
        version,
        PropertyContext::Subscribe,
        PacketType::Subscribe,
    )?;
    Ok(Sizes::new(
        2 + section_len(properties, version) + payload,
        properties,
    ))
}

pub(crate) fn put_subscribe(
    subscribe: &Subscribe,
    version: ProtocolVersion,
    sizes: &Sizes,
    dst: &mut BytesMut,
) {
    dst.put_u16(subscribe.packet_id.get());
    if version.is_v5() {
        put_properties(dst, &subscribe.properties, sizes.properties);
    }
    for (filter, options) in &subscribe.filters {
        put_prefixed(dst, filter.as_str().as_bytes());
        dst.put_u8(options_byte(*options));
    }
}

/// Returns `true` for the SUBACK return codes of MQTT 3.1.1: granted QoS 0 to 2 and
/// failure 0x80 (MQTT 3.1.1 section 3.9.3).
fn suback_code_in_v3(reason: SubAckReason) -> bool {
    matches!(
        reason,
        SubAckReason::GrantedQoS0
            | SubAckReason::GrantedQoS1
            | SubAckReason::GrantedQoS2
            | SubAckReason::UnspecifiedError
    )
}

pub(crate) fn decode_suback(
    mut reader: Reader,
    version: ProtocolVersion,
) -> Result<SubAck, Violation> {
    let (packet_id, properties) = read_header(&mut reader, version, PropertyContext::SubAck)?;
    let reasons = reader
        .take_rest()
        .iter()
        .map(|&code| {
            SubAckReason::try_from(code)
                .ok()
                .filter(|&reason| version.is_v5() || suback_code_in_v3(reason))
                .ok_or(Violation::InvalidReasonCode {
                    packet_type: PacketType::SubAck,
                    code,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if reasons.is_empty() {
        return Err(Violation::NoReasonCodes {
            packet_type: PacketType::SubAck,
        });
    }
    Ok(SubAck {
        packet_id,
        reasons,
        properties: properties.into(),
    })
}

pub(crate) fn measure_suback(
    suback: &SubAck,
    version: ProtocolVersion,
) -> Result<Sizes, EncodeError> {
    if suback.reasons.is_empty() {
        return Err(EncodeError::InvalidPacket("SUBACK without reason codes"));
    }
    if !version.is_v5()
        && !suback
            .reasons
            .iter()
            .all(|&reason| suback_code_in_v3(reason))
    {
        return Err(EncodeError::NotInVersion {
            what: "a SUBACK reason code other than granted QoS or 0x80",
            version,
        });
    }
    let properties = measure_properties(
        &suback.properties,
        version,
        PropertyContext::SubAck,
        PacketType::SubAck,
    )?;
    Ok(Sizes::new(
        2 + section_len(properties, version) + suback.reasons.len(),
        properties,
    ))
}

pub(crate) fn put_suback(
    suback: &SubAck,
    version: ProtocolVersion,
    sizes: &Sizes,
    dst: &mut BytesMut,
) {
    dst.put_u16(suback.packet_id.get());
    if version.is_v5() {
        put_properties(dst, &suback.properties, sizes.properties);
    }
    for reason in &suback.reasons {
        dst.put_u8(reason.code());
    }
}

pub(crate) fn decode_unsubscribe(
    mut reader: Reader,
    version: ProtocolVersion,
) -> Result<Unsubscribe, Violation> {
    let (packet_id, properties) = read_header(&mut reader, version, PropertyContext::Unsubscribe)?;
    let mut filters = Vec::new();
    while !reader.is_empty() {
        filters.push(read_filter(&mut reader)?);
    }
    if filters.is_empty() {
        return Err(Violation::NoTopicFilters {
            packet_type: PacketType::Unsubscribe,
        });
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        properties: properties.into(),
    })
}

pub(crate) fn measure_unsubscribe(
    unsubscribe: &Unsubscribe,
    version: ProtocolVersion,
) -> Result<Sizes, EncodeError> {
    if unsubscribe.filters.is_empty() {
        return Err(EncodeError::InvalidPacket(
            "UNSUBSCRIBE without topic filters",
        ));
    }
    let payload: usize = unsubscribe
        .filters
        .iter()
        .map(|filter| 2 + filter.as_str().len())
        .sum();
    let properties = measure_properties(
        &unsubscribe.properties,
        version,
        PropertyContext::Unsubscribe,
        PacketType::Unsubscribe,
    )?;
    Ok(Sizes::new(
        2 + section_len(properties, version) + payload,
        properties,
    ))
}

pub(crate) fn put_unsubscribe(
    unsubscribe: &Unsubscribe,
    version: ProtocolVersion,
    sizes: &Sizes,
    dst: &mut BytesMut,
) {
    dst.put_u16(unsubscribe.packet_id.get());
    if version.is_v5() {
        put_properties(dst, &unsubscribe.properties, sizes.properties);
    }
    for filter in &unsubscribe.filters {
        put_prefixed(dst, filter.as_str().as_bytes());
    }
}

/// Decodes UNSUBACK: only a packet identifier in MQTT 3.1.1, then properties and one
/// reason code per filter in MQTT 5.0.
pub(crate) fn decode_unsuback(
    mut reader: Reader,
    version: ProtocolVersion,
) -> Result<UnsubAck, Violation> {
    let (packet_id, properties) = read_header(&mut reader, version, PropertyContext::UnsubAck)?;
    if !version.is_v5() {
        reader.finish()?;
    }
    let reasons = reader
        .take_rest()
        .iter()
        .map(|&code| {
            UnsubAckReason::try_from(code).map_err(|code| Violation::InvalidReasonCode {
                packet_type: PacketType::UnsubAck,
                code,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if version.is_v5() && reasons.is_empty() {
        return Err(Violation::NoReasonCodes {
            packet_type: PacketType::UnsubAck,
        });
    }
    Ok(UnsubAck {
        packet_id,
        reasons,
        properties: properties.into(),
    })
}

pub(crate) fn measure_unsuback(
    unsuback: &UnsubAck,
    version: ProtocolVersion,
) -> Result<Sizes, EncodeError> {
    if version.is_v5() && unsuback.reasons.is_empty() {
        return Err(EncodeError::InvalidPacket("UNSUBACK without reason codes"));
    }
    if !version.is_v5() && !unsuback.reasons.is_empty() {
        return Err(EncodeError::NotInVersion {
            what: "UNSUBACK reason codes",
            version,
        });
    }
    let properties = measure_properties(
        &unsuback.properties,
        version,
        PropertyContext::UnsubAck,
        PacketType::UnsubAck,
    )?;
    Ok(Sizes::new(
        2 + section_len(properties, version) + unsuback.reasons.len(),
        properties,
    ))
}

pub(crate) fn put_unsuback(
    unsuback: &UnsubAck,
    version: ProtocolVersion,
    sizes: &Sizes,
    dst: &mut BytesMut,
) {
    dst.put_u16(unsuback.packet_id.get());
    if version.is_v5() {
        put_properties(dst, &unsuback.properties, sizes.properties);
    }
    for reason in &unsuback.reasons {
        dst.put_u8(reason.code());
    }
}
