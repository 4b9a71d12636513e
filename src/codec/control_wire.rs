//! Layout of DISCONNECT (section 3.14) and AUTH (section 3.15), in both directions.
//!
//! Both start with an optional reason code and optional properties, and some of their
//! reason codes may be sent by one side only, so decoding needs to know the sender.

use bytes::{BufMut, BytesMut};

use super::encoder::Sizes;
use super::error::{EncodeError, Violation};
use super::packet::{Auth, Disconnect, PacketType};
use super::properties::{BoxedProperties, Properties};
use super::property_wire::{
    measure_properties, put_properties, read_properties, section_len, PropertyContext,
};
use super::reason::{AuthReason, DisconnectReason};
use super::types::ProtocolVersion;
use super::wire::Reader;

/// Sender of the packet being decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sender {
    Client,
    Server,
}

/// Reads the optional reason code and properties: a remaining length of 0 means
/// code 0 and no properties, of 1 a code without properties (MQTT 5.0 sections
/// 3.14.2.1 and 3.14.2.2.1).
fn read_code_and_properties(
    reader: &mut Reader,
    context: PropertyContext,
) -> Result<(u8, Properties), Violation> {
    if reader.is_empty() {
        return Ok((0, Properties::default()));
    }
    let code = reader.u8()?;
    let properties = if reader.is_empty() {
        Properties::default()
    } else {
        read_properties(reader, context)?
    };
    reader.finish()?;
    Ok((code, properties))
}

/// Returns who may send a DISCONNECT with `reason`, `None` for both sides (table in
/// MQTT 5.0 section 3.14.2.1).
fn disconnect_sender(reason: DisconnectReason) -> Option<Sender> {
    use DisconnectReason as R;
    match reason {
        R::DisconnectWithWillMessage => Some(Sender::Client),
        R::NotAuthorized
        | R::ServerBusy
        | R::ServerShuttingDown
        | R::KeepAliveTimeout
        | R::SessionTakenOver
        | R::TopicFilterInvalid
        | R::RetainNotSupported
        | R::QoSNotSupported
        | R::UseAnotherServer
        | R::ServerMoved
        | R::SharedSubscriptionsNotSupported
        | R::ConnectionRateExceeded
        | R::MaximumConnectTime
        | R::SubscriptionIdentifiersNotSupported
        | R::WildcardSubscriptionsNotSupported => Some(Sender::Server),
        _ => None,
    }
}

pub(crate) fn decode_disconnect(
    mut reader: Reader,
    version: ProtocolVersion,
    sender: Sender,
) -> Result<Disconnect, Violation> {
    if !version.is_v5() {
        reader.finish()?;
        return Ok(Disconnect {
            reason: DisconnectReason::NormalDisconnection,
            properties: BoxedProperties::default(),
        });
    }
    let (code, properties) = read_code_and_properties(&mut reader, PropertyContext::Disconnect)?;
    let reason = DisconnectReason::try_from(code).map_err(|code| Violation::InvalidReasonCode {
        packet_type: PacketType::Disconnect,
        code,
    })?;
    if disconnect_sender(reason).is_some_and(|allowed| allowed != sender) {
        return Err(Violation::ReasonCodeWrongDirection {
            packet_type: PacketType::Disconnect,
            code,
        });
    }
    if sender == Sender::Server && properties.session_expiry_interval.is_some() {
        return Err(Violation::SessionExpiryFromServer);
    }
    Ok(Disconnect {
        reason,
        properties: properties.into(),
    })
}

pub(crate) fn measure_disconnect(
    disconnect: &Disconnect,
    version: ProtocolVersion,
) -> Result<Sizes, EncodeError> {
    if !version.is_v5() && disconnect.reason != DisconnectReason::NormalDisconnection {
        return Err(EncodeError::NotInVersion {
            what: "a DISCONNECT reason code",
            version,
        });
    }
    let properties = measure_properties(
        &disconnect.properties,
        version,
        PropertyContext::Disconnect,
        PacketType::Disconnect,
    )?;
    let is_normal = disconnect.reason == DisconnectReason::NormalDisconnection;
    Ok(Sizes::new(
        short_form_len(is_normal, properties, version),
        properties,
    ))
}

/// Returns the remaining length of a DISCONNECT or AUTH in its shortest form: nothing
/// for code 0 without properties (and always before MQTT 5.0), the code alone without
/// properties, else the code and the property list (MQTT 5.0 section 3.14.2.2.1).
fn short_form_len(is_success: bool, properties: usize, version: ProtocolVersion) -> usize {
    if !version.is_v5() || (is_success && properties == 0) {
        0
    } else if properties == 0 {
        1
    } else {
        1 + section_len(properties, version)
    }
}

fn put_code_and_properties(code: u8, properties: &Properties, sizes: &Sizes, dst: &mut BytesMut) {
    if sizes.remaining == 0 {
        return;
    }
    dst.put_u8(code);
    if sizes.remaining > 1 {
        put_properties(dst, properties, sizes.properties);
    }
}

pub(crate) fn put_disconnect(
    disconnect: &Disconnect,
    _version: ProtocolVersion,
    sizes: &Sizes,
    dst: &mut BytesMut,
) {
    put_code_and_properties(disconnect.reason.code(), &disconnect.properties, sizes, dst);
}

pub(crate) fn decode_auth(mut reader: Reader, sender: Sender) -> Result<Auth, Violation> {
    let (code, properties) = read_code_and_properties(&mut reader, PropertyContext::Auth)?;
    let reason = AuthReason::try_from(code).map_err(|code| Violation::InvalidReasonCode {
        packet_type: PacketType::Auth,
        code,
    })?;
    // Only a client starts re-authentication (MQTT 5.0 section 3.15.2.1).
    if reason == AuthReason::ReAuthenticate && sender == Sender::Server {
        return Err(Violation::ReasonCodeWrongDirection {
            packet_type: PacketType::Auth,
            code,
        });
    }
    Ok(Auth {
        reason,
        properties: properties.into(),
    })
}

pub(crate) fn measure_auth(auth: &Auth, version: ProtocolVersion) -> Result<Sizes, EncodeError> {
    if !version.is_v5() {
        return Err(EncodeError::NotInVersion {
            what: "AUTH",
            version,
        });
    }
    let properties = measure_properties(
        &auth.properties,
        version,
        PropertyContext::Auth,
        PacketType::Auth,
    )?;
    Ok(Sizes::new(
        short_form_len(auth.reason == AuthReason::Success, properties, version),
        properties,
    ))
}

pub(crate) fn put_auth(auth: &Auth, _version: ProtocolVersion, sizes: &Sizes, dst: &mut BytesMut) {
    put_code_and_properties(auth.reason.code(), &auth.properties, sizes, dst);
}
