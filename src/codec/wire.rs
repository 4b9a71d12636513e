//! Wire primitives shared by every packet: Variable Byte Integers, big-endian
//! integers, UTF-8 strings and binary data (MQTT 5.0 section 1.5).
//!
//! Reading goes through [`Reader`], which never indexes past its buffer and reports a
//! short read as a truncated packet. Writing assumes the caller has already checked
//! lengths and limits; it only appends to a `BytesMut`.

use std::num::NonZeroU16;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use super::error::Violation;
use super::packet::PacketType;
use super::types::{disallowed_character, InvalidValue, PacketId};

/// Largest value a Variable Byte Integer can hold (four bytes of seven bits).
pub(crate) const MAX_VARIABLE_BYTE_INTEGER: u32 = 268_435_455;

/// Returns how many bytes the Variable Byte Integer encoding of `value` takes.
pub(crate) fn variable_byte_integer_len(value: u32) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Appends `value` as a Variable Byte Integer. The caller keeps `value` at or below
/// [`MAX_VARIABLE_BYTE_INTEGER`]; higher bits are dropped.
pub(crate) fn put_variable_byte_integer(dst: &mut BytesMut, value: u32) {
    let mut rest = value & MAX_VARIABLE_BYTE_INTEGER;
    loop {
        let byte = (rest & 0x7F) as u8;
        rest >>= 7;
        if rest == 0 {
            dst.put_u8(byte);
            return;
        }
        dst.put_u8(byte | 0x80);
    }
}

/// Appends a length-prefixed string or binary value. The caller has checked that it is
/// at most 65,535 bytes long.
pub(crate) fn put_prefixed(dst: &mut BytesMut, value: &[u8]) {
    dst.put_u16(value.len() as u16);
    dst.put_slice(value);
}

/// Parses a Variable Byte Integer at the start of `bytes`. Returns `Ok(None)` when
/// `bytes` ends before the integer does, else the value and the number of bytes used.
#[inline]
pub(crate) fn parse_variable_byte_integer(bytes: &[u8]) -> Result<Option<(u32, usize)>, Violation> {
    let mut value: u32 = 0;
    for (index, &byte) in bytes.iter().take(4).enumerate() {
        value |= u32::from(byte & 0x7F) << (7 * index);
        if byte & 0x80 == 0 {
            // A zero last byte after the first adds nothing: a shorter encoding exists.
            if index > 0 && byte == 0 {
                return Err(Violation::NonMinimalVariableByteInteger);
            }
            return Ok(Some((value, index + 1)));
        }
    }
    if bytes.len() >= 4 {
        return Err(Violation::VariableByteIntegerTooLong);
    }
    Ok(None)
}

/// Checks a received string: valid UTF-8 [MQTT-1.5.4-1], no U+0000 [MQTT-1.5.4-2],
/// no control characters or noncharacters. The result shares `bytes`' memory.
pub(crate) fn parse_string(bytes: Bytes) -> Result<ByteString, Violation> {
    let string = ByteString::try_from(bytes).map_err(|_| Violation::InvalidUtf8)?;
    match disallowed_character(&string) {
        None => Ok(string),
        Some('\0') => Err(Violation::NullCharacter),
        Some(character) => Err(Violation::DisallowedCharacter(character)),
    }
}

/// Maps the error of a validated string type (topic, filter, client identifier) to a
/// violation: character errors keep their own variant, `otherwise` wraps the rest.
pub(crate) fn value_violation(
    error: InvalidValue,
    otherwise: fn(InvalidValue) -> Violation,
) -> Violation {
    match error {
        InvalidValue::NullCharacter => Violation::NullCharacter,
        InvalidValue::DisallowedCharacter(character) => Violation::DisallowedCharacter(character),
        other => otherwise(other),
    }
}

/// Cursor over the body of one received packet. Every read checks the remaining
/// length first and fails with [`Violation::Truncated`] instead of panicking.
#[derive(Debug)]
pub(crate) struct Reader {
    buf: Bytes,
    packet_type: PacketType,
}

impl Reader {
    /// Starts reading `buf`, the body of a packet of type `packet_type`.
    #[inline]
    pub(crate) fn new(buf: Bytes, packet_type: PacketType) -> Self {
        Self { buf, packet_type }
    }

    /// Returns the type of the packet being read.
    #[inline]
    pub(crate) fn packet_type(&self) -> PacketType {
        self.packet_type
    }

    /// Returns `true` when every byte has been read.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    #[inline]
    fn need(&self, len: usize) -> Result<(), Violation> {
        if self.buf.len() < len {
            return Err(self.truncated());
        }
        Ok(())
    }

    /// Returns the error for a read past the end of this packet.
    pub(crate) fn truncated(&self) -> Violation {
        Violation::Truncated {
            packet_type: self.packet_type,
        }
    }

    /// Returns the next byte without reading it, `None` at the end.
    #[inline]
    pub(crate) fn peek_u8(&self) -> Option<u8> {
        self.buf.first().copied()
    }

    #[inline]
    pub(crate) fn u8(&mut self) -> Result<u8, Violation> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }

    #[inline]
    pub(crate) fn u16(&mut self) -> Result<u16, Violation> {
        let Some(&[high, low]) = self.buf.first_chunk::<2>() else {
            return Err(self.truncated());
        };
        self.buf.advance(2);
        Ok(u16::from_be_bytes([high, low]))
    }

    #[inline]
    pub(crate) fn u32(&mut self) -> Result<u32, Violation> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }

    #[inline]
    pub(crate) fn variable_byte_integer(&mut self) -> Result<u32, Violation> {
        match parse_variable_byte_integer(&self.buf)? {
            Some((value, len)) => {
                self.buf.advance(len);
                Ok(value)
            }
            None => Err(self.truncated()),
        }
    }

    /// Reads a packet identifier, which must not be 0 [MQTT-2.2.1-3].
    #[inline]
    pub(crate) fn packet_id(&mut self) -> Result<PacketId, Violation> {
        let value = self.u16()?;
        NonZeroU16::new(value)
            .map(PacketId::from)
            .ok_or(Violation::ZeroPacketId {
                packet_type: self.packet_type,
            })
    }

    /// Skips `len` bytes, which the caller knows are there.
    #[inline]
    pub(crate) fn skip(&mut self, len: usize) {
        self.buf.advance(len.min(self.buf.len()));
    }

    /// Splits off the next `len` bytes without copying.
    #[inline]
    pub(crate) fn bytes(&mut self, len: usize) -> Result<Bytes, Violation> {
        self.need(len)?;
        Ok(self.buf.split_to(len))
    }

    /// Reads Binary Data: a two-byte length, then that many bytes.
    #[inline]
    pub(crate) fn binary(&mut self) -> Result<Bytes, Violation> {
        let len = self.u16()?;
        self.bytes(usize::from(len))
    }

    /// Reads a UTF-8 Encoded String and checks it with [`parse_string`].
    pub(crate) fn string(&mut self) -> Result<ByteString, Violation> {
        let bytes = self.binary()?;
        parse_string(bytes)
    }

    /// Reads a string's bytes as UTF-8 without the character checks, for callers that
    /// pass the result to a constructor that checks them.
    pub(crate) fn utf8(&mut self) -> Result<ByteString, Violation> {
        let bytes = self.binary()?;
        ByteString::try_from(bytes).map_err(|_| Violation::InvalidUtf8)
    }

    /// Splits off the next `len` bytes as a reader of their own.
    #[inline]
    pub(crate) fn sub_reader(&mut self, len: usize) -> Result<Self, Violation> {
        let buf = self.bytes(len)?;
        Ok(Self::new(buf, self.packet_type))
    }

    /// Takes every unread byte without copying.
    #[inline]
    pub(crate) fn take_rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Checks that every byte has been read.
    #[inline]
    pub(crate) fn finish(&self) -> Result<(), Violation> {
        if self.buf.is_empty() {
            return Ok(());
        }
        Err(Violation::TrailingBytes {
            packet_type: self.packet_type,
            extra: self.buf.len(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    /// Boundary values of the Variable Byte Integer table in MQTT 5.0 section 1.5.5.
    const VARIABLE_BYTE_INTEGERS: &[(u32, &[u8])] = &[
        (0, &[0x00]),
        (127, &[0x7F]),
        (128, &[0x80, 0x01]),
        (16_383, &[0xFF, 0x7F]),
        (16_384, &[0x80, 0x80, 0x01]),
        (2_097_151, &[0xFF, 0xFF, 0x7F]),
        (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
        (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
    ];

    #[test]
    fn variable_byte_integer_spec_table_encodes() {
        for &(value, expected) in VARIABLE_BYTE_INTEGERS {
            let mut dst = BytesMut::new();
            put_variable_byte_integer(&mut dst, value);
            assert_eq!(&dst[..], expected, "value {value}");
            assert_eq!(
                variable_byte_integer_len(value),
                expected.len(),
                "value {value}"
            );
        }
    }

    #[test]
    fn variable_byte_integer_spec_table_decodes() {
        for &(value, bytes) in VARIABLE_BYTE_INTEGERS {
            let parsed = parse_variable_byte_integer(bytes).unwrap();
            assert_eq!(parsed, Some((value, bytes.len())), "bytes {bytes:02x?}");
        }
    }

    #[test]
    fn variable_byte_integer_incomplete_needs_more() {
        assert_eq!(parse_variable_byte_integer(&[]).unwrap(), None);
        assert_eq!(parse_variable_byte_integer(&[0x80]).unwrap(), None);
        assert_eq!(
            parse_variable_byte_integer(&[0xFF, 0xFF, 0xFF]).unwrap(),
            None
        );
    }

    #[test]
    fn variable_byte_integer_five_bytes_rejected() {
        let result = parse_variable_byte_integer(&[0x80, 0x80, 0x80, 0x80, 0x01]);
        assert_eq!(result, Err(Violation::VariableByteIntegerTooLong));
    }

    #[test]
    fn variable_byte_integer_non_minimal_rejected() {
        for bytes in [
            &[0x80, 0x00][..],
            &[0xFF, 0x80, 0x00],
            &[0x81, 0x80, 0x80, 0x00],
        ] {
            let result = parse_variable_byte_integer(bytes);
            assert_eq!(
                result,
                Err(Violation::NonMinimalVariableByteInteger),
                "{bytes:02x?}"
            );
        }
    }

    #[test]
    fn string_example_from_spec_decodes() {
        // MQTT 5.0 section 1.5.4, figure 1-3: "A𪛔" is 41 F0 AA 9B 94.
        let mut reader = Reader::new(
            Bytes::from_static(&[0x00, 0x05, 0x41, 0xF0, 0xAA, 0x9B, 0x94]),
            PacketType::Publish,
        );
        assert_eq!(reader.string().unwrap(), "A\u{2A6D4}");
        assert!(reader.is_empty());
    }

    #[test]
    fn string_with_bad_characters_rejected() {
        let cases: &[(&[u8], Violation)] = &[
            (b"to\x00p", Violation::NullCharacter),
            (b"to\x01p", Violation::DisallowedCharacter('\u{1}')),
            (b"to\x7fp", Violation::DisallowedCharacter('\u{7f}')),
            (b"to\xc2\x9fp", Violation::DisallowedCharacter('\u{9f}')),
            (
                b"to\xef\xbf\xbf",
                Violation::DisallowedCharacter('\u{ffff}'),
            ),
            (b"to\xed\xa0\x80", Violation::InvalidUtf8),
            (b"to\xff", Violation::InvalidUtf8),
        ];
        for (bytes, expected) in cases {
            let result = parse_string(Bytes::from_static(bytes));
            assert_eq!(result.as_ref().err(), Some(expected), "{bytes:02x?}");
        }
    }

    #[test]
    fn short_reads_report_truncated() {
        let mut reader = Reader::new(Bytes::from_static(&[0x00, 0x03, b'a']), PacketType::PubAck);
        let expected = Violation::Truncated {
            packet_type: PacketType::PubAck,
        };
        assert_eq!(reader.string(), Err(expected.clone()));
        let mut reader = Reader::new(Bytes::from_static(&[0x01]), PacketType::PubAck);
        assert_eq!(reader.u16(), Err(expected.clone()));
        assert_eq!(reader.u32(), Err(expected));
    }

    #[test]
    fn zero_packet_id_rejected() {
        let mut reader = Reader::new(Bytes::from_static(&[0x00, 0x00]), PacketType::PubRec);
        assert_eq!(
            reader.packet_id(),
            Err(Violation::ZeroPacketId {
                packet_type: PacketType::PubRec
            })
        );
    }

    #[test]
    fn finish_reports_trailing_bytes() {
        let reader = Reader::new(Bytes::from_static(&[1, 2]), PacketType::SubAck);
        assert_eq!(
            reader.finish(),
            Err(Violation::TrailingBytes {
                packet_type: PacketType::SubAck,
                extra: 2
            })
        );
    }
}
