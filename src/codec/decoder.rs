//! The streaming decoder: splits whole packets off the front of a read buffer and
//! parses them.
//!
//! The fixed header is checked as soon as it arrives, so a forbidden packet type or an
//! oversized length fails before its body is buffered. Packet layouts live in the
//! `*_wire` modules; this module owns framing, direction rules and the version.

use bytes::{Buf, BytesMut};

use super::connect_wire::{decode_connack, decode_connect};
use super::control_wire::{decode_auth, decode_disconnect, Sender};
use super::error::{DecodeError, Violation, DEFAULT_MAX_PACKET_SIZE};
use super::packet::{Packet, PacketType};
use super::publish_wire::{decode_acknowledgement, decode_publish};
use super::subscribe_wire::{decode_suback, decode_subscribe, decode_unsuback, decode_unsubscribe};
use super::types::ProtocolVersion;
use super::wire::{parse_variable_byte_integer, Reader};

/// Decodes a stream of packets received on one connection, keeping nothing between
/// calls except the protocol version: a partial packet stays in the caller's buffer.
///
/// A client uses [`Decoder::for_client`] with the version it connected with; a server
/// (such as a test broker) uses [`Decoder::for_server`], which learns the version from
/// the CONNECT packet. After an error the connection must be closed; the buffer is
/// left as it was at the start of the failed packet.
#[derive(Debug, Clone)]
pub struct Decoder {
    sender: Sender,
    version: Option<ProtocolVersion>,
    max_packet_size: u32,
}

impl Decoder {
    /// Returns a decoder for the packets a server sends to a client speaking `version`.
    #[must_use]
    pub fn for_client(version: ProtocolVersion) -> Self {
        Self {
            sender: Sender::Server,
            version: Some(version),
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
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
    /// Returns `Ok(None)` when `buf` does not yet hold a whole packet; nothing is
    /// consumed then, and `buf` may be grown to fit the rest of the packet. On
    /// `Ok(Some(packet))` the packet's bytes are split off the front of `buf`, and the
    /// packet's payloads and strings share that memory instead of copying it.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        let Some(&first_byte) = buf.first() else {
            return Ok(None);
        };
        let packet_type = self.check_first_byte(first_byte)?;
        let Some((remaining, length_len)) =
            parse_variable_byte_integer(buf.get(1..).unwrap_or_default())?
        else {
            return Ok(None);
        };

        let size = 1 + length_len + remaining as usize;
        if size > self.max_packet_size as usize {
            return Err(DecodeError::PacketTooLarge {
                size,
                max: self.max_packet_size,
            });
        }
        if buf.len() < size {
            buf.reserve(size - buf.len());
            return Ok(None);
        }

        let mut frame = buf.split_to(size);
        frame.advance(1 + length_len);
        let reader = Reader::new(frame.freeze(), packet_type);
        let packet = self.decode_body(reader, first_byte & 0x0F)?;
        if let Packet::Connect(connect) = &packet {
            self.version = Some(connect.protocol);
        }
        Ok(Some(packet))
    }

    /// Checks the packet type and flags in the first byte of the fixed header.
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
    /// (section 2.1.2), and that a server receives CONNECT first [MQTT-3.1.0-1].
    fn check_direction(&self, packet_type: PacketType) -> Result<(), Violation> {
        use PacketType as T;
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

    fn decode_body(&self, reader: Reader, flags: u8) -> Result<Packet, Violation> {
        let packet_type = reader.packet_type();
        if packet_type == PacketType::Connect {
            return Ok(Packet::Connect(Box::new(decode_connect(reader)?)));
        }
        // `check_direction` let only CONNECT through without a version.
        let version = self
            .version
            .ok_or(Violation::FirstPacketNotConnect { packet_type })?;
        let packet = match packet_type {
            PacketType::Connect => return Err(Violation::FirstPacketNotConnect { packet_type }),
            PacketType::ConnAck => Packet::ConnAck(decode_connack(reader, version)?),
            PacketType::Publish => Packet::Publish(decode_publish(reader, flags, version)?),
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
