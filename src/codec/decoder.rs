//! The streaming decoder: splits whole packets off the front of a read buffer and
//! parses them.
//!
//! The fixed header is checked as soon as it arrives, so a forbidden packet type or an
//! oversized length fails before its body is buffered. Packet layouts live in the
//! `*_wire` modules; this module owns framing, direction rules and the version.

use bytes::BytesMut;

use super::connect_wire::{decode_connack, decode_connect};
use super::control_wire::{decode_auth, decode_disconnect, Sender};
use super::error::{DecodeError, Violation, DEFAULT_MAX_PACKET_SIZE};
use super::packet::{Packet, PacketType};
use super::publish_wire::{decode_acknowledgement, decode_publish};
use super::subscribe_wire::{decode_suback, decode_subscribe, decode_unsuback, decode_unsubscribe};
use super::types::ProtocolVersion;
use super::wire::{parse_variable_byte_integer, Reader};

/// Most bytes [`Decoder::decode`] reserves ahead for a packet that has not fully arrived.
/// Larger packets grow the buffer as their bytes come in.
const MAX_RESERVE_AHEAD: usize = 64 * 1024;

/// Decodes a stream of packets received on one connection, keeping nothing between
/// calls except the protocol version: a partial packet stays in the caller's buffer.
///
/// A client uses [`Decoder::for_client`] with the version it connected with. A server,
/// such as a test broker, uses [`Decoder::for_server`], which takes the version from
/// the CONNECT packet. After an error the connection must be closed. An error in the
/// fixed header leaves `buf` unchanged; an error in the body comes after the packet's
/// bytes were split off `buf`, because decoding shares them instead of copying.
#[derive(Debug, Clone)]
pub struct Decoder {
    sender: Sender,
    version: Option<ProtocolVersion>,
    max_packet_size: u32,
    /// Whether a server decoder has decoded a CONNECT, after which another one is a
    /// Protocol Error [MQTT-3.1.0-2].
    connect_received: bool,
}

impl Decoder {
    /// Returns a decoder for the packets a server sends to a client speaking `version`.
    #[must_use]
    pub fn for_client(version: ProtocolVersion) -> Self {
        Self {
            sender: Sender::Server,
            version: Some(version),
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
            connect_received: false,
        }
    }

    /// Returns a decoder for the packets clients send to a server. It accepts only
    /// CONNECT until one has been decoded, then uses that packet's protocol version.
    #[must_use]
    pub fn for_server() -> Self {
        Self {
            sender: Sender::Client,
            version: None,
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
            connect_received: false,
        }
    }

    /// Sets the largest packet accepted, in bytes, fixed header included; the default
    /// is [`DEFAULT_MAX_PACKET_SIZE`].
    #[must_use]
    pub fn with_max_packet_size(mut self, max: u32) -> Self {
        self.max_packet_size = max;
        self
    }

    /// Sets the largest packet accepted, in bytes, fixed header included.
    pub fn set_max_packet_size(&mut self, max: u32) {
        self.max_packet_size = max;
    }

    /// Returns the protocol version in use; `None` for a server decoder before CONNECT.
    #[must_use]
    pub fn version(&self) -> Option<ProtocolVersion> {
        self.version
    }

    /// Sets the protocol version used to decode the following packets.
    pub fn set_version(&mut self, version: ProtocolVersion) {
        self.version = Some(version);
    }

    /// Decodes the packet at the front of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` does not yet contain a whole packet. Nothing is
    /// consumed then, and `buf` may be grown to fit the rest of the packet. On
    /// `Ok(Some(packet))` the packet's bytes are split off the front of `buf`, and the
    /// packet's payloads and strings share that memory instead of copying it.
    #[inline]
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        let Some(&first_byte) = buf.first() else {
            return Ok(None);
        };
        let packet_type = self.check_first_byte(first_byte)?;
        // A remaining length below 128 takes one byte, the common case on the hot path.
        let (remaining, length_len) = match buf.get(1) {
            Some(&byte) if byte < 0x80 => (u32::from(byte), 1),
            _ => match parse_variable_byte_integer(buf.get(1..).unwrap_or_default())? {
                Some(length) => length,
                None => return Ok(None),
            },
        };

        let size = 1 + length_len + remaining as usize;
        if size > self.max_packet_size as usize {
            return Err(DecodeError::PacketTooLarge {
                size,
                max: self.max_packet_size,
            });
        }
        if buf.len() < size {
            // Reserve at most a bounded step ahead: a peer announcing a large packet in
            // a 5-byte header must not make us allocate its full size before it sends it.
            buf.reserve((size - buf.len()).min(MAX_RESERVE_AHEAD));
            return Ok(None);
        }

        // Skipping the fixed header after `freeze` moves two fields; on the `BytesMut`
        // it costs several times more.
        let mut reader = Reader::new(buf.split_to(size).freeze(), packet_type);
        reader.skip(1 + length_len);
        let flags = first_byte & 0x0F;
        match (packet_type, self.version) {
            (PacketType::Connect, _) => {
                let connect = decode_connect(reader)?;
                self.version = Some(connect.protocol);
                self.connect_received = true;
                Ok(Some(Packet::Connect(Box::new(connect))))
            }
            // The hot path returns straight into the caller's slot: the packet is large,
            // and each move of it costs more than parsing a small PUBLISH.
            (PacketType::Publish, Some(version)) => {
                decode_publish(reader, flags, version, self.sender)
            }
            (_, Some(version)) => Ok(Some(self.decode_body(reader, version)?)),
            // `check_direction` lets only CONNECT through without a version.
            (_, None) => Err(Violation::FirstPacketNotConnect { packet_type }.into()),
        }
    }

    /// Checks the packet type and flags in the first byte of the fixed header.
    #[inline]
    fn check_first_byte(&self, byte: u8) -> Result<PacketType, Violation> {
        let packet_type = packet_type_of(byte >> 4, self.version)?;
        let flags = byte & 0x0F;
        let valid_flags = match packet_type {
            PacketType::Publish => {
                if flags & 0b0110 == 0b0110 {
                    return Err(Violation::InvalidQoS);
                }
                flags
            }
            PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => 0b0010,
            _ => 0,
        };
        if flags != valid_flags {
            return Err(Violation::InvalidFixedHeaderFlags { packet_type, flags });
        }
        self.check_direction(packet_type)?;
        Ok(packet_type)
    }

    /// Checks that `packet_type` travels from the sender this decoder reads
    /// (section 2.1.2), and that a server receives CONNECT first and once
    /// [MQTT-3.1.0-1] [MQTT-3.1.0-2].
    #[inline]
    fn check_direction(&self, packet_type: PacketType) -> Result<(), Violation> {
        use PacketType as T;
        if packet_type == T::Connect && self.connect_received {
            return Err(Violation::SecondConnect);
        }
        let Some(version) = self.version else {
            if packet_type == T::Connect {
                return Ok(());
            }
            return Err(Violation::FirstPacketNotConnect { packet_type });
        };
        let allowed = match packet_type {
            T::Publish | T::PubAck | T::PubRec | T::PubRel | T::PubComp | T::Auth => true,
            T::Connect | T::Subscribe | T::Unsubscribe | T::PingReq => {
                self.sender == Sender::Client
            }
            T::ConnAck | T::SubAck | T::UnsubAck | T::PingResp => self.sender == Sender::Server,
            // A server sends DISCONNECT only in MQTT 5.0 (MQTT 3.1.1 section 3.14).
            T::Disconnect => self.sender == Sender::Client || version.is_v5(),
        };
        if !allowed {
            return Err(Violation::UnexpectedPacketType { packet_type });
        }
        Ok(())
    }

    fn decode_body(&self, reader: Reader, version: ProtocolVersion) -> Result<Packet, Violation> {
        let packet_type = reader.packet_type();
        let packet = match packet_type {
            PacketType::Connect | PacketType::Publish => {
                return Err(Violation::UnexpectedPacketType { packet_type })
            }
            PacketType::ConnAck => Packet::ConnAck(decode_connack(reader, version)?),
            PacketType::PubAck => Packet::PubAck(decode_acknowledgement(reader, version)?),
            PacketType::PubRec => Packet::PubRec(decode_acknowledgement(reader, version)?),
            PacketType::PubRel => Packet::PubRel(decode_acknowledgement(reader, version)?),
            PacketType::PubComp => Packet::PubComp(decode_acknowledgement(reader, version)?),
            PacketType::Subscribe => Packet::Subscribe(decode_subscribe(reader, version)?),
            PacketType::SubAck => Packet::SubAck(decode_suback(reader, version)?),
            PacketType::Unsubscribe => Packet::Unsubscribe(decode_unsubscribe(reader, version)?),
            PacketType::UnsubAck => Packet::UnsubAck(decode_unsuback(reader, version)?),
            PacketType::PingReq => {
                reader.finish()?;
                Packet::PingReq
            }
            PacketType::PingResp => {
                reader.finish()?;
                Packet::PingResp
            }
            PacketType::Disconnect => {
                Packet::Disconnect(decode_disconnect(reader, version, self.sender)?)
            }
            PacketType::Auth => Packet::Auth(decode_auth(reader, self.sender)?),
        };
        Ok(packet)
    }
}

/// Returns the packet type numbered `number`. Type 0 is reserved, and so is 15 before
/// MQTT 5.0 (section 2.1.2), which AUTH uses in 5.0.
#[inline]
fn packet_type_of(number: u8, version: Option<ProtocolVersion>) -> Result<PacketType, Violation> {
    use PacketType as T;
    let packet_type = match number {
        1 => T::Connect,
        2 => T::ConnAck,
        3 => T::Publish,
        4 => T::PubAck,
        5 => T::PubRec,
        6 => T::PubRel,
        7 => T::PubComp,
        8 => T::Subscribe,
        9 => T::SubAck,
        10 => T::Unsubscribe,
        11 => T::UnsubAck,
        12 => T::PingReq,
        13 => T::PingResp,
        14 => T::Disconnect,
        15 if version.map_or(true, ProtocolVersion::is_v5) => T::Auth,
        other => return Err(Violation::ReservedPacketType(other)),
    };
    Ok(packet_type)
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::too_many_lines
)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::codec::packet::{ConnAck, Delivery, PubAck, Publish};
    use crate::codec::properties::Properties;
    use crate::codec::reason::{ConnectReason, DisconnectReason, PubAckReason, SubAckReason};
    use crate::codec::topic::TopicName;
    use crate::codec::types::PacketId;

    fn decode_one(decoder: &mut Decoder, bytes: &[u8]) -> Result<Packet, DecodeError> {
        let mut buf = BytesMut::from(bytes);
        let packet = decoder.decode(&mut buf)?.expect("a whole packet");
        assert!(buf.is_empty(), "bytes left after the packet: {buf:02x?}");
        Ok(packet)
    }

    fn client(version: ProtocolVersion, bytes: &[u8]) -> Result<Packet, DecodeError> {
        decode_one(&mut Decoder::for_client(version), bytes)
    }

    fn violation(result: Result<Packet, DecodeError>) -> Violation {
        match result {
            Err(DecodeError::Violation(violation)) => violation,
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    fn id(value: u16) -> PacketId {
        PacketId::try_from(value).unwrap()
    }

    #[test]
    fn connack_v3_return_codes_map_to_v5_names() {
        let cases = [
            (0, ConnectReason::Success),
            (1, ConnectReason::UnsupportedProtocolVersion),
            (2, ConnectReason::ClientIdentifierNotValid),
            (3, ConnectReason::ServerUnavailable),
            (4, ConnectReason::BadUserNameOrPassword),
            (5, ConnectReason::NotAuthorized),
        ];
        for (code, reason) in cases {
            let packet = client(ProtocolVersion::V3_1_1, &[0x20, 0x02, 0x00, code]).unwrap();
            let expected = Packet::ConnAck(ConnAck {
                session_present: false,
                reason,
                properties: Properties::default().into(),
            });
            assert_eq!(packet, expected, "return code {code}");
        }
    }

    #[test]
    fn connack_invalid_flags_and_codes_rejected() {
        let v3 = ProtocolVersion::V3_1_1;
        assert_eq!(
            violation(client(v3, &[0x20, 2, 0x02, 0])),
            Violation::ConnAckReservedFlags(2)
        );
        assert_eq!(
            violation(client(v3, &[0x20, 2, 0x01, 5])),
            Violation::SessionPresentOnFailure
        );
        assert_eq!(
            violation(client(v3, &[0x20, 2, 0x00, 6])),
            Violation::InvalidReasonCode {
                packet_type: PacketType::ConnAck,
                code: 6
            }
        );
        assert_eq!(
            violation(client(v3, &[0x20, 3, 0, 0, 0])),
            Violation::TrailingBytes {
                packet_type: PacketType::ConnAck,
                extra: 1
            }
        );
        let v5 = ProtocolVersion::V5;
        assert_eq!(
            violation(client(v5, &[0x20, 2, 0, 0])),
            Violation::Truncated {
                packet_type: PacketType::ConnAck
            }
        );
    }

    #[test]
    fn publish_v3_decodes_without_copy() {
        // Topic "a/b", packet identifier 10, payload "hi" (MQTT 3.1.1 section 3.3).
        let bytes = [
            0x32, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, b'h', b'i',
        ];
        let mut buf = BytesMut::from(&bytes[..]);
        let start = buf.as_ptr() as usize;
        let packet = Decoder::for_client(ProtocolVersion::V3_1_1)
            .decode(&mut buf)
            .unwrap()
            .unwrap();
        let Packet::Publish(publish) = packet else {
            panic!("expected PUBLISH, got {packet:?}");
        };
        assert_eq!(publish.topic.as_ref().map(TopicName::as_str), Some("a/b"));
        assert_eq!(publish.delivery, Delivery::AtLeastOnce(id(10)));
        assert_eq!(publish.payload, Bytes::from_static(b"hi"));
        let payload_at = publish.payload.as_ptr() as usize;
        assert_eq!(
            payload_at,
            start + 9,
            "payload is a slice of the read buffer"
        );
        let topic_at = publish.topic.unwrap().as_str().as_ptr() as usize;
        assert_eq!(topic_at, start + 4, "topic is a slice of the read buffer");
    }

    #[test]
    fn publish_qos0_dup_decodes_without_dup() {
        let bytes = [0x38, 0x04, 0x00, 0x01, b't', b'p'];
        let Packet::Publish(publish) = client(ProtocolVersion::V3_1_1, &bytes).unwrap() else {
            panic!("expected PUBLISH");
        };
        assert!(!publish.dup);
        assert_eq!(publish.delivery, Delivery::AtMostOnce);
        assert_eq!(publish.payload, Bytes::from_static(b"p"));
    }

    #[test]
    fn publish_qos3_rejected_as_malformed() {
        let error = client(ProtocolVersion::V5, &[0x36, 0x04, 0x00, 0x01, b't', 0x00]).unwrap_err();
        assert_eq!(error, DecodeError::Violation(Violation::InvalidQoS));
        assert_eq!(error.rule(), Some("MQTT-3.3.1-4"));
        assert_eq!(error.reason_code(), DisconnectReason::MalformedPacket);
    }

    #[test]
    fn publish_zero_packet_id_rejected() {
        let error = client(
            ProtocolVersion::V5,
            &[0x32, 0x06, 0x00, 0x01, b't', 0x00, 0x00, 0x00],
        )
        .unwrap_err();
        assert_eq!(error.rule(), Some("MQTT-2.2.1-3"));
        assert_eq!(error.reason_code(), DisconnectReason::ProtocolError);
    }

    #[test]
    fn publish_topic_alias_replaces_empty_topic() {
        // Empty topic name, property length 3, Topic Alias 7, payload "x".
        let bytes = [0x30, 0x07, 0x00, 0x00, 0x03, 0x23, 0x00, 0x07, b'x'];
        let Packet::Publish(publish) = client(ProtocolVersion::V5, &bytes).unwrap() else {
            panic!("expected PUBLISH");
        };
        assert_eq!(publish.topic, None);
        assert_eq!(
            publish
                .properties
                .topic_alias
                .map(std::num::NonZeroU16::get),
            Some(7)
        );
    }

    #[test]
    fn publish_empty_topic_without_alias_rejected() {
        let v5 = client(ProtocolVersion::V5, &[0x30, 0x03, 0x00, 0x00, 0x00]);
        assert_eq!(violation(v5), Violation::MissingTopic);
        let v3 = client(ProtocolVersion::V3_1_1, &[0x30, 0x02, 0x00, 0x00]);
        assert_eq!(violation(v3), Violation::MissingTopic);
    }

    #[test]
    fn publish_topic_with_wildcard_rejected() {
        let result = client(ProtocolVersion::V3_1_1, &[0x30, 0x03, 0x00, 0x01, b'#']);
        let error = result.unwrap_err();
        assert_eq!(error.rule(), Some("MQTT-3.3.2-2"));
        assert_eq!(error.reason_code(), DisconnectReason::MalformedPacket);
    }

    #[test]
    fn fixed_header_flags_checked() {
        let cases: &[(u8, PacketType)] = &[
            (0x60, PacketType::PubRel),
            (0x41, PacketType::PubAck),
            (0x21, PacketType::ConnAck),
            (0xD2, PacketType::PingResp),
        ];
        for &(byte, packet_type) in cases {
            let result = client(ProtocolVersion::V5, &[byte, 0x00]);
            let expected = Violation::InvalidFixedHeaderFlags {
                packet_type,
                flags: byte & 0x0F,
            };
            assert_eq!(violation(result), expected, "first byte {byte:#04x}");
        }
    }

    #[test]
    fn client_only_packets_rejected_by_client() {
        for byte in [0x10, 0x82, 0xA2, 0xC0] {
            let result = client(ProtocolVersion::V3_1_1, &[byte, 0x00]);
            let error = result.unwrap_err();
            assert!(
                matches!(
                    error,
                    DecodeError::Violation(Violation::UnexpectedPacketType { .. })
                ),
                "first byte {byte:#04x}: {error:?}"
            );
            assert_eq!(error.reason_code(), DisconnectReason::ProtocolError);
        }
    }

    #[test]
    fn reserved_packet_types_rejected() {
        assert_eq!(
            violation(client(ProtocolVersion::V5, &[0x00, 0x00])),
            Violation::ReservedPacketType(0)
        );
        assert_eq!(
            violation(client(ProtocolVersion::V3_1_1, &[0xF0, 0x00])),
            Violation::ReservedPacketType(15)
        );
    }

    #[test]
    fn server_disconnect_only_in_v5() {
        let v3 = client(ProtocolVersion::V3_1_1, &[0xE0, 0x00]);
        assert_eq!(
            violation(v3),
            Violation::UnexpectedPacketType {
                packet_type: PacketType::Disconnect
            }
        );
        let v5 = client(ProtocolVersion::V5, &[0xE0, 0x01, 0x8B]).unwrap();
        assert!(matches!(
            v5,
            Packet::Disconnect(crate::codec::packet::Disconnect {
                reason: DisconnectReason::ServerShuttingDown,
                ..
            })
        ));
    }

    #[test]
    fn server_disconnect_direction_rules() {
        let will = client(ProtocolVersion::V5, &[0xE0, 0x01, 0x04]);
        assert_eq!(
            violation(will),
            Violation::ReasonCodeWrongDirection {
                packet_type: PacketType::Disconnect,
                code: 0x04
            }
        );
        let expiry = client(
            ProtocolVersion::V5,
            &[0xE0, 0x07, 0x00, 0x05, 0x11, 0, 0, 0, 1],
        );
        assert_eq!(violation(expiry), Violation::SessionExpiryFromServer);
    }

    #[test]
    fn remaining_length_of_five_bytes_rejected() {
        let result = client(
            ProtocolVersion::V3_1_1,
            &[0x30, 0x80, 0x80, 0x80, 0x80, 0x01],
        );
        assert_eq!(violation(result), Violation::VariableByteIntegerTooLong);
    }

    #[test]
    fn oversized_packet_rejected_from_header() {
        let mut decoder = Decoder::for_client(ProtocolVersion::V5).with_max_packet_size(100);
        // Remaining length 98 makes 100 bytes in all, which fits; 99 does not.
        let mut fits = BytesMut::from(&[0x30, 98][..]);
        assert_eq!(decoder.decode(&mut fits), Ok(None));
        assert!(
            fits.capacity() >= 100,
            "buffer grown for the rest of the packet"
        );
        let mut too_large = BytesMut::from(&[0x30, 99][..]);
        assert_eq!(
            decoder.decode(&mut too_large),
            Err(DecodeError::PacketTooLarge {
                size: 101,
                max: 100
            })
        );
    }

    #[test]
    fn puback_v5_short_forms() {
        let cases: &[(&[u8], PubAckReason, Option<&str>)] = &[
            (&[0x40, 0x02, 0x00, 0x01], PubAckReason::Success, None),
            (
                &[0x40, 0x03, 0x00, 0x01, 0x10],
                PubAckReason::NoMatchingSubscribers,
                None,
            ),
            (
                &[0x40, 0x04, 0x00, 0x01, 0x80, 0x00],
                PubAckReason::UnspecifiedError,
                None,
            ),
            (
                &[0x40, 0x08, 0x00, 0x01, 0x87, 0x04, 0x1F, 0x00, 0x01, b'r'],
                PubAckReason::NotAuthorized,
                Some("r"),
            ),
        ];
        for &(bytes, reason, reason_string) in cases {
            let packet = client(ProtocolVersion::V5, bytes).unwrap();
            let Packet::PubAck(PubAck {
                packet_id,
                reason: decoded,
                properties,
            }) = packet
            else {
                panic!("expected PUBACK from {bytes:02x?}");
            };
            assert_eq!(packet_id, id(1), "{bytes:02x?}");
            assert_eq!(decoded, reason, "{bytes:02x?}");
            assert_eq!(
                properties.reason_string.as_deref(),
                reason_string,
                "{bytes:02x?}"
            );
        }
    }

    #[test]
    fn puback_v3_with_reason_code_rejected() {
        let result = client(ProtocolVersion::V3_1_1, &[0x40, 0x03, 0x00, 0x01, 0x00]);
        assert_eq!(
            violation(result),
            Violation::TrailingBytes {
                packet_type: PacketType::PubAck,
                extra: 1
            }
        );
    }

    #[test]
    fn suback_codes_depend_on_version() {
        let failure = [0x90, 0x03, 0x00, 0x01, 0x80];
        let Packet::SubAck(suback) = client(ProtocolVersion::V3_1_1, &failure).unwrap() else {
            panic!("expected SUBACK");
        };
        assert_eq!(suback.reasons, [SubAckReason::UnspecifiedError]);
        let v5_only = [0x90, 0x03, 0x00, 0x01, 0x87];
        assert!(client(ProtocolVersion::V3_1_1, &v5_only).is_err());
        let v5_only_in_v5 = [0x90, 0x04, 0x00, 0x01, 0x00, 0x87];
        assert!(client(ProtocolVersion::V5, &v5_only_in_v5).is_ok());
        let empty = [0x90, 0x02, 0x00, 0x01];
        assert_eq!(
            violation(client(ProtocolVersion::V3_1_1, &empty)),
            Violation::NoReasonCodes {
                packet_type: PacketType::SubAck
            }
        );
    }

    #[test]
    fn auth_rejected_before_v5_and_reauthenticate_from_server() {
        assert!(client(ProtocolVersion::V3_1_1, &[0xF0, 0x00]).is_err());
        let packet = client(ProtocolVersion::V5, &[0xF0, 0x00]).unwrap();
        assert!(matches!(packet, Packet::Auth(_)));
        let result = client(ProtocolVersion::V5, &[0xF0, 0x02, 0x19, 0x00]);
        assert!(matches!(
            violation(result),
            Violation::ReasonCodeWrongDirection { .. }
        ));
    }

    #[test]
    fn one_byte_at_a_time_yields_packet_at_last_byte() {
        let bytes = [
            0x32, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, b'h', b'i',
        ];
        let mut decoder = Decoder::for_client(ProtocolVersion::V3_1_1);
        let mut buf = BytesMut::new();
        for (index, &byte) in bytes.iter().enumerate() {
            buf.extend_from_slice(&[byte]);
            let result = decoder.decode(&mut buf).unwrap();
            assert_eq!(
                result.is_some(),
                index == bytes.len() - 1,
                "after byte {index}"
            );
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn two_packets_in_one_buffer() {
        let mut buf = BytesMut::from(&[0xD0, 0x00, 0x40, 0x02, 0x00, 0x07, 0xD0][..]);
        let mut decoder = Decoder::for_client(ProtocolVersion::V3_1_1);
        assert_eq!(decoder.decode(&mut buf).unwrap(), Some(Packet::PingResp));
        let Some(Packet::PubAck(puback)) = decoder.decode(&mut buf).unwrap() else {
            panic!("expected PUBACK");
        };
        assert_eq!(puback.packet_id, id(7));
        assert_eq!(decoder.decode(&mut buf).unwrap(), None);
        assert_eq!(&buf[..], [0xD0]);
    }

    /// CONNECT of MQTT 3.1.1 with clean session, keep-alive 60 and client id "c".
    const CONNECT_V3_1_1: [u8; 15] = [
        0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x01, b'c',
    ];

    #[test]
    fn server_learns_version_from_connect() {
        let mut decoder = Decoder::for_server();
        assert_eq!(decoder.version(), None);
        let Packet::Connect(connect) = decode_one(&mut decoder, &CONNECT_V3_1_1).unwrap() else {
            panic!("expected CONNECT");
        };
        assert_eq!(connect.protocol, ProtocolVersion::V3_1_1);
        assert!(connect.clean_start);
        assert_eq!(connect.keep_alive, 60);
        assert_eq!(connect.client_id.as_str(), "c");
        assert_eq!(decoder.version(), Some(ProtocolVersion::V3_1_1));
        assert_eq!(
            decode_one(&mut decoder, &[0xC0, 0x00]).unwrap(),
            Packet::PingReq
        );
    }

    #[test]
    fn server_rejects_second_connect() {
        let mut decoder = Decoder::for_server();
        decode_one(&mut decoder, &CONNECT_V3_1_1).unwrap();
        let result = decode_one(&mut decoder, &CONNECT_V3_1_1);
        let error = result.unwrap_err();
        assert_eq!(error, DecodeError::Violation(Violation::SecondConnect));
        assert_eq!(error.rule(), Some("MQTT-3.1.0-2"));
        assert_eq!(decoder.version(), Some(ProtocolVersion::V3_1_1));
    }

    #[test]
    fn server_rejects_subscription_identifier_from_client() {
        let mut decoder = Decoder::for_server();
        decoder.set_version(ProtocolVersion::V5);
        // QoS 0 PUBLISH to "t" with Subscription Identifier 1.
        let bytes = [0x30, 0x06, 0x00, 0x01, b't', 0x02, 0x0B, 0x01];
        let error = decode_one(&mut decoder, &bytes).unwrap_err();
        assert_eq!(error.rule(), Some("MQTT-3.3.4-6"));
        assert_eq!(error.reason_code(), DisconnectReason::ProtocolError);
    }

    #[test]
    fn server_rejects_packets_before_connect() {
        let result = decode_one(&mut Decoder::for_server(), &[0xC0, 0x00]);
        assert_eq!(
            violation(result),
            Violation::FirstPacketNotConnect {
                packet_type: PacketType::PingReq
            }
        );
    }

    #[test]
    fn connect_mqisdp_level_3_is_mqtt_3_1() {
        let bytes = [
            0x10, 0x0F, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x02, 0x00, 0x3C,
            0x00, 0x01, b'c',
        ];
        let Packet::Connect(connect) = decode_one(&mut Decoder::for_server(), &bytes).unwrap()
        else {
            panic!("expected CONNECT");
        };
        assert_eq!(connect.protocol, ProtocolVersion::V3_1);
    }

    #[test]
    fn connect_flag_rules_checked() {
        let mut reserved = CONNECT_V3_1_1;
        reserved[9] = 0x03;
        assert_eq!(
            violation(decode_one(&mut Decoder::for_server(), &reserved)),
            Violation::ConnectReservedFlag
        );
        let mut will_qos = CONNECT_V3_1_1;
        will_qos[9] = 0x0A;
        assert_eq!(
            violation(decode_one(&mut Decoder::for_server(), &will_qos)),
            Violation::WillFlagsWithoutWill
        );
        let mut password = CONNECT_V3_1_1;
        password[9] = 0x42;
        assert_eq!(
            violation(decode_one(&mut Decoder::for_server(), &password)),
            Violation::PasswordWithoutUsername
        );
        let mut level = CONNECT_V3_1_1;
        level[8] = 0x06;
        assert!(matches!(
            violation(decode_one(&mut Decoder::for_server(), &level)),
            Violation::UnsupportedProtocol { level: 6, .. }
        ));
    }

    #[test]
    fn publish_v5_properties_decode() {
        // Topic "t", QoS 0, Payload Format Indicator 1, two Subscription Identifiers.
        let bytes = [
            0x30, 0x0B, 0x00, 0x01, b't', 0x06, 0x01, 0x01, 0x0B, 0x05, 0x0B, 0x7F, b'z',
        ];
        let Packet::Publish(Publish {
            properties,
            payload,
            ..
        }) = client(ProtocolVersion::V5, &bytes).unwrap()
        else {
            panic!("expected PUBLISH");
        };
        assert_eq!(
            properties.payload_format_indicator,
            Some(crate::codec::properties::PayloadFormat::Utf8)
        );
        let identifiers: Vec<u32> = properties
            .subscription_identifiers
            .iter()
            .map(|value| value.get())
            .collect();
        assert_eq!(identifiers, [5, 127]);
        assert_eq!(payload, Bytes::from_static(b"z"));
    }

    #[test]
    fn large_announced_packet_reserves_bounded_step() {
        // A PUBLISH header announcing 16,000,000 bytes, with no body yet.
        let mut buf = BytesMut::from(&[0x30, 0x80, 0xC8, 0xD0, 0x07][..]);
        let mut decoder = Decoder::for_client(ProtocolVersion::V3_1_1);

        assert!(matches!(decoder.decode(&mut buf), Ok(None)));
        assert!(
            buf.capacity() <= 2 * MAX_RESERVE_AHEAD,
            "{}",
            buf.capacity()
        );
    }
}
