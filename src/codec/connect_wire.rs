//! Layout of CONNECT (section 3.1) and CONNACK (section 3.2), in both directions.
//!
//! CONNECT is the one packet whose layout differs between MQTT 3.1 and 3.1.1: the
//! protocol name is "MQIsdp" at level 3 instead of "MQTT" at level 4. It is also the
//! one packet encoded in a single checking-and-writing pass, by [`encode_connect`].

use bytes::{BufMut, BytesMut};

use super::encoder::{
    binary_field_len, checked_total, first_byte_of, string_field_len, write_packet, Sizes,
};
use super::error::{EncodeError, Violation};
use super::packet::{ConnAck, Connect, LastWill, PacketType};
use super::properties::Properties;
use super::properties::PropertyId;
use super::property_wire::{
    measure_properties, measure_properties_but_characters, put_properties, read_properties,
    section_len, PropertyContext,
};
use super::reason::ConnectReason;
use super::topic::TopicName;
use super::types::{ClientId, ProtocolVersion, QoS};
use super::wire::{
    put_prefixed, put_variable_byte_integer, value_violation, Reader, Sink, SizedWriter,
};

const USERNAME_FLAG: u8 = 0b1000_0000;
const PASSWORD_FLAG: u8 = 0b0100_0000;
const WILL_RETAIN_FLAG: u8 = 0b0010_0000;
const WILL_FLAG: u8 = 0b0000_0100;
const CLEAN_START_FLAG: u8 = 0b0000_0010;
const RESERVED_FLAG: u8 = 0b0000_0001;

/// Returns the protocol name sent in CONNECT for `version`.
fn protocol_name(version: ProtocolVersion) -> &'static str {
    match version {
        ProtocolVersion::V3_1 => "MQIsdp",
        ProtocolVersion::V3_1_1 | ProtocolVersion::V5 => "MQTT",
    }
}

/// Decodes a CONNECT body. The protocol version comes from the packet itself.
pub(crate) fn decode_connect(mut reader: Reader) -> Result<Connect, Violation> {
    let name = reader.utf8()?;
    let level = reader.u8()?;
    let protocol = ProtocolVersion::try_from(level)
        .ok()
        .filter(|&version| name == protocol_name(version))
        .ok_or_else(|| Violation::UnsupportedProtocol {
            name: name.to_string(),
            level,
        })?;

    let flags = reader.u8()?;
    check_connect_flags(flags, protocol)?;
    let keep_alive = reader.u16()?;
    let properties = if protocol.is_v5() {
        read_properties(&mut reader, PropertyContext::Connect)?
    } else {
        Properties::default()
    };

    let client_id = ClientId::try_from(reader.utf8()?)
        .map_err(|error| value_violation(error, |_| Violation::InvalidUtf8))?;
    let will = if flags & WILL_FLAG == 0 {
        None
    } else {
        Some(read_will(&mut reader, flags, protocol)?)
    };
    let username = if flags & USERNAME_FLAG == 0 {
        None
    } else {
        Some(reader.string()?)
    };
    let password = if flags & PASSWORD_FLAG == 0 {
        None
    } else {
        Some(reader.binary()?)
    };
    reader.finish()?;

    Ok(Connect {
        protocol,
        clean_start: flags & CLEAN_START_FLAG != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

/// Checks the CONNECT flags byte (section 3.1.2.3).
fn check_connect_flags(flags: u8, version: ProtocolVersion) -> Result<(), Violation> {
    if flags & RESERVED_FLAG != 0 {
        return Err(Violation::ConnectReservedFlag);
    }
    let will_qos = (flags >> 3) & 0b11;
    if flags & WILL_FLAG == 0 && (will_qos != 0 || flags & WILL_RETAIN_FLAG != 0) {
        return Err(Violation::WillFlagsWithoutWill);
    }
    if will_qos == 3 {
        return Err(Violation::InvalidWillQoS);
    }
    if !version.is_v5() && flags & PASSWORD_FLAG != 0 && flags & USERNAME_FLAG == 0 {
        return Err(Violation::PasswordWithoutUsername);
    }
    Ok(())
}

fn read_will(
    reader: &mut Reader,
    flags: u8,
    version: ProtocolVersion,
) -> Result<LastWill, Violation> {
    let properties = if version.is_v5() {
        read_properties(reader, PropertyContext::Will)?
    } else {
        Properties::default()
    };
    let topic = TopicName::try_from(reader.utf8()?)
        .map_err(|error| value_violation(error, Violation::InvalidTopic))?;
    let payload = reader.binary()?;
    let qos = QoS::try_from((flags >> 3) & 0b11).map_err(|_| Violation::InvalidWillQoS)?;
    Ok(LastWill {
        topic,
        payload,
        qos,
        retain: flags & WILL_RETAIN_FLAG != 0,
        properties,
    })
}

/// Checks a CONNECT for `version` and returns its sizes.
pub(crate) fn measure_connect(
    connect: &Connect,
    version: ProtocolVersion,
) -> Result<Sizes, EncodeError> {
    checked_connect_sizes::<true>(connect, version)
}

/// Checks and measures a CONNECT as [`measure_connect`] does, except for the
/// characters of the user name and the property strings: the caller writes it with
/// [`put_connect`] to a [`SizedWriter`](super::wire::SizedWriter) and runs
/// [`measure_connect`] when that finds a string that is not printable ASCII.
pub(crate) fn measure_connect_but_characters(
    connect: &Connect,
    version: ProtocolVersion,
) -> Result<Sizes, EncodeError> {
    checked_connect_sizes::<false>(connect, version)
}

fn checked_connect_sizes<const CHARACTERS: bool>(
    connect: &Connect,
    version: ProtocolVersion,
) -> Result<Sizes, EncodeError> {
    check_connect_rules(connect, version)?;
    let measure = if CHARACTERS {
        measure_properties
    } else {
        measure_properties_but_characters
    };
    let properties = measure(
        &connect.properties,
        version,
        PropertyContext::Connect,
        PacketType::Connect,
    )?;
    let mut remaining =
        2 + protocol_name(version).len() + 1 + 1 + 2 + section_len(properties, version);
    remaining += 2 + connect.client_id.as_str().len();

    let mut will_properties = 0;
    if let Some(will) = &connect.will {
        will_properties = measure(
            &will.properties,
            version,
            PropertyContext::Will,
            PacketType::Connect,
        )?;
        remaining += section_len(will_properties, version);
        remaining += 2 + will.topic.as_str().len();
        remaining += binary_field_len("will payload", &will.payload)?;
    }
    if let Some(username) = &connect.username {
        remaining += if CHARACTERS {
            string_field_len("user name", username)?
        } else {
            binary_field_len("user name", username.as_bytes())?
        };
    }
    if let Some(password) = &connect.password {
        remaining += binary_field_len("password", password)?;
    }
    Ok(Sizes {
        remaining,
        properties,
        will_properties,
    })
}

/// Encodes a CONNECT with the same result as the two passes of
/// [`encode`](super::encoder::encode), but checks the characters of its strings
/// while writing them.
///
/// Strings of printable ASCII, the common case, need no further check. When one is
/// not, [`measure_connect`] runs the full checks, so that the error and its
/// precedence are those of the two-pass path, and on success that path writes the
/// packet again.
#[inline(never)]
pub(crate) fn encode_connect(
    connect: &Connect,
    version: ProtocolVersion,
    max_packet_size: u32,
    dst: &mut BytesMut,
) -> Result<(), EncodeError> {
    let sizes = measure_connect_but_characters(connect, version)?;
    let total = match checked_total(sizes.remaining, max_packet_size) {
        Ok(total) => total,
        Err(too_large) => {
            // A character error comes first, as in the two-pass path.
            measure_connect(connect, version)?;
            return Err(too_large);
        }
    };

    let start = dst.len();
    dst.resize(start + total, 0);
    let mut writer = SizedWriter::new(dst.get_mut(start..).unwrap_or_default());
    writer.write_array([first_byte_of(PacketType::Connect)]);
    put_variable_byte_integer(&mut writer, sizes.remaining as u32);
    put_connect(connect, version, &sizes, &mut writer);
    debug_assert!(
        !writer.is_clean() || writer.is_full(),
        "CONNECT measured {total} bytes and wrote fewer"
    );
    if writer.is_clean() {
        return Ok(());
    }

    dst.truncate(start);
    let sizes = measure_connect(connect, version)?;
    write_packet(
        first_byte_of(PacketType::Connect),
        &sizes,
        max_packet_size,
        dst,
        |dst| put_connect(connect, version, &sizes, dst),
    )
}

/// Checks the rules that relate the fields of a CONNECT to each other and to the
/// encoding version.
fn check_connect_rules(connect: &Connect, version: ProtocolVersion) -> Result<(), EncodeError> {
    if connect.protocol != version {
        return Err(EncodeError::InvalidPacket(
            "CONNECT protocol differs from the encoding version",
        ));
    }
    if !version.is_v5() {
        // [MQTT-3.1.2-22]: before 5.0 a password requires a user name.
        if connect.password.is_some() && connect.username.is_none() {
            return Err(EncodeError::NotInVersion {
                what: "a password without a user name",
                version,
            });
        }
        // [MQTT-3.1.3-7]: before 5.0 an empty client identifier requires clean
        // session 1. MQTT 5.0 lets the server assign one to any session.
        if connect.client_id.is_empty() && !connect.clean_start {
            return Err(EncodeError::NotInVersion {
                what: "an empty client identifier without clean session",
                version,
            });
        }
    }
    // Authentication Data without Authentication Method is a Protocol Error (MQTT 5.0
    // section 3.1.2.11.10).
    let properties = &connect.properties;
    if properties.authentication_data.is_some() && properties.authentication_method.is_none() {
        return Err(EncodeError::InvalidProperty {
            packet_type: PacketType::Connect,
            property: PropertyId::AuthenticationData,
            problem: "authentication data requires an authentication method",
        });
    }
    Ok(())
}

fn connect_flags(connect: &Connect) -> u8 {
    let mut flags = 0;
    if connect.clean_start {
        flags |= CLEAN_START_FLAG;
    }
    if let Some(will) = &connect.will {
        flags |= WILL_FLAG | will.qos.level() << 3;
        if will.retain {
            flags |= WILL_RETAIN_FLAG;
        }
    }
    if connect.username.is_some() {
        flags |= USERNAME_FLAG;
    }
    if connect.password.is_some() {
        flags |= PASSWORD_FLAG;
    }
    flags
}

/// Appends the body of a CONNECT measured with `sizes`.
pub(crate) fn put_connect<S: Sink>(
    connect: &Connect,
    version: ProtocolVersion,
    sizes: &Sizes,
    dst: &mut S,
) {
    put_prefixed(dst, protocol_name(version).as_bytes());
    dst.write_array([version.level(), connect_flags(connect)]);
    dst.write_array(connect.keep_alive.to_be_bytes());
    if version.is_v5() {
        put_properties(dst, &connect.properties, sizes.properties);
    }
    put_prefixed(dst, connect.client_id.as_str().as_bytes());
    if let Some(will) = &connect.will {
        if version.is_v5() {
            put_properties(dst, &will.properties, sizes.will_properties);
        }
        put_prefixed(dst, will.topic.as_str().as_bytes());
        put_prefixed(dst, &will.payload);
    }
    if let Some(username) = &connect.username {
        dst.write_string(None, username);
    }
    if let Some(password) = &connect.password {
        put_prefixed(dst, password);
    }
}

/// Maps a CONNACK return code of MQTT 3.1 and 3.1.1 (section 3.2.2.3) to its MQTT 5.0
/// name.
fn connack_reason_from_v3(code: u8) -> Option<ConnectReason> {
    match code {
        0 => Some(ConnectReason::Success),
        1 => Some(ConnectReason::UnsupportedProtocolVersion),
        2 => Some(ConnectReason::ClientIdentifierNotValid),
        3 => Some(ConnectReason::ServerUnavailable),
        4 => Some(ConnectReason::BadUserNameOrPassword),
        5 => Some(ConnectReason::NotAuthorized),
        _ => None,
    }
}

/// Returns the MQTT 3.1.1 return code of `reason`, `None` when 3.1.1 has none.
fn connack_reason_to_v3(reason: ConnectReason) -> Option<u8> {
    (0..=5).find(|&code| connack_reason_from_v3(code) == Some(reason))
}

pub(crate) fn decode_connack(
    mut reader: Reader,
    version: ProtocolVersion,
) -> Result<ConnAck, Violation> {
    let flags = reader.u8()?;
    if flags & 0b1111_1110 != 0 {
        return Err(Violation::ConnAckReservedFlags(flags));
    }
    let code = reader.u8()?;
    let reason = if version.is_v5() {
        ConnectReason::try_from(code).ok()
    } else {
        connack_reason_from_v3(code)
    };
    let reason = reason.ok_or(Violation::InvalidReasonCode {
        packet_type: PacketType::ConnAck,
        code,
    })?;
    let session_present = flags & 1 != 0;
    if session_present && code != 0 {
        return Err(Violation::SessionPresentOnFailure);
    }

    let properties = if version.is_v5() {
        // NOTE: bytes after the MQTT 5.0 properties are ignored, not rejected, because
        // Mosquitto's client library accepts such a CONNACK and its test suite expects
        // clients to stay connected.
        read_properties(&mut reader, PropertyContext::ConnAck)?
    } else {
        reader.finish()?;
        Properties::default()
    };
    Ok(ConnAck {
        session_present,
        reason,
        properties: properties.into(),
    })
}

pub(crate) fn measure_connack(
    connack: &ConnAck,
    version: ProtocolVersion,
) -> Result<Sizes, EncodeError> {
    if connack.session_present && connack.reason != ConnectReason::Success {
        return Err(EncodeError::InvalidPacket(
            "session present on a refused connection",
        ));
    }
    if !version.is_v5() && connack_reason_to_v3(connack.reason).is_none() {
        return Err(EncodeError::NotInVersion {
            what: "this CONNACK reason code",
            version,
        });
    }
    let properties = measure_properties(
        &connack.properties,
        version,
        PropertyContext::ConnAck,
        PacketType::ConnAck,
    )?;
    Ok(Sizes::new(2 + section_len(properties, version), properties))
}

pub(crate) fn put_connack(
    connack: &ConnAck,
    version: ProtocolVersion,
    sizes: &Sizes,
    dst: &mut BytesMut,
) {
    dst.put_u8(u8::from(connack.session_present));
    if version.is_v5() {
        dst.put_u8(connack.reason.code());
        put_properties(dst, &connack.properties, sizes.properties);
    } else {
        dst.put_u8(connack_reason_to_v3(connack.reason).unwrap_or_default());
    }
}
