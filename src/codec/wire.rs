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
use super::types::{disallowed_character, is_printable_ascii, InvalidValue, PacketId};

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
pub(crate) fn put_variable_byte_integer(dst: &mut impl Sink, value: u32) {
    let mut rest = value & MAX_VARIABLE_BYTE_INTEGER;
    loop {
        let byte = (rest & 0x7F) as u8;
        rest >>= 7;
        if rest == 0 {
            dst.write_array([byte]);
            return;
        }
        dst.write_array([byte | 0x80]);
    }
}

/// Appends a length-prefixed string or binary value. The caller has checked that it is
/// at most 65,535 bytes long.
#[inline]
pub(crate) fn put_prefixed(dst: &mut impl Sink, value: &[u8]) {
    dst.write_array((value.len() as u16).to_be_bytes());
    dst.write_slice(value);
}

/// Destination of the encoder's writing pass: a `BytesMut` that grows as needed, or
/// a [`SizedWriter`] over bytes sized in advance.
pub(crate) trait Sink: Sized {
    /// Appends the bytes of a fixed-size array.
    fn write_array<const N: usize>(&mut self, bytes: [u8; N]);

    /// Appends `bytes`.
    fn write_slice(&mut self, bytes: &[u8]);

    /// Appends `tag`, when there is one, and a length-prefixed string. A
    /// [`SizedWriter`] also notes whether the string is printable ASCII. The caller
    /// has checked that it is at most 65,535 bytes long.
    fn write_string(&mut self, tag: Option<u8>, value: &str) {
        if let Some(tag) = tag {
            self.write_array([tag]);
        }
        put_prefixed(self, value.as_bytes());
    }

    /// Runs `write` on this sink, or on a copy of it in a local variable, which the
    /// compiler keeps in registers because no write through the sink can change it.
    fn write_locally<R>(&mut self, write: impl FnOnce(&mut Self) -> R) -> R {
        write(self)
    }
}

impl Sink for BytesMut {
    #[inline]
    fn write_array<const N: usize>(&mut self, bytes: [u8; N]) {
        BufMut::put_slice(self, &bytes);
    }

    #[inline]
    fn write_slice(&mut self, bytes: &[u8]) {
        BufMut::put_slice(self, bytes);
    }
}

/// Writes over a slice that already has the packet's measured length. A write is a
/// bounds check and a store, without the capacity and length updates of a
/// `BytesMut`, and strings of up to 16 bytes and other values of up to 32 bytes are
/// copied inline instead of through `memcpy`. Each string is checked for printable
/// ASCII on the words of its copy.
///
/// A write that does not fit is skipped and ends the writing. Then, as after a
/// string that is not printable ASCII, [`SizedWriter::is_clean`] returns `false`,
/// and the caller must check and write the packet the slow way.
#[derive(Debug)]
pub(crate) struct SizedWriter<'a> {
    /// The part of the slice not written yet.
    rest: &'a mut [u8],
    /// [`unprintable_marks`] of every string written, or'ed together, and
    /// [`HIGH_BITS`] after a write that did not fit.
    marks: u64,
}

impl<'a> SizedWriter<'a> {
    /// Starts writing at the beginning of `buf`.
    pub(crate) fn new(buf: &'a mut [u8]) -> Self {
        Self {
            rest: buf,
            marks: 0,
        }
    }

    /// Returns `true` when every byte of the slice has been written.
    pub(crate) fn is_full(&self) -> bool {
        self.rest.is_empty()
    }

    /// Returns `true` when every write fit and every string written was printable
    /// ASCII, so that nothing needs a further check.
    pub(crate) fn is_clean(&self) -> bool {
        self.marks & HIGH_BITS == 0
    }

    /// Writes `head` and then the string `bytes` with one bounds check for both, and
    /// notes the [`unprintable_marks`] of `bytes`.
    #[allow(clippy::inline_always)] // See `write_array`.
    #[inline(always)]
    fn write_headed<const N: usize>(&mut self, head: &[u8; N], bytes: &[u8]) {
        // With the checked sum the compiler can prove that the slot is at least N
        // bytes long, so the split below needs no check of its own.
        let slot = bytes
            .len()
            .checked_add(N)
            .and_then(|len| self.next_slot(len));
        let Some((head_slot, body)) = slot.and_then(<[u8]>::split_first_chunk_mut::<N>) else {
            self.marks |= HIGH_BITS;
            return;
        };
        *head_slot = *head;
        self.marks |= copy_short(body, bytes, true);
    }

    /// Returns the next `len` bytes to write, or `None` when they do not fit.
    #[allow(clippy::inline_always)] // See `write_array`.
    #[inline(always)]
    fn next_slot(&mut self, len: usize) -> Option<&'a mut [u8]> {
        let Some((slot, rest)) = std::mem::take(&mut self.rest).split_at_mut_checked(len) else {
            self.marks |= HIGH_BITS;
            return None;
        };
        self.rest = rest;
        Some(slot)
    }
}

impl Sink for SizedWriter<'_> {
    #[allow(clippy::inline_always)] // Each call is a few instructions once inlined.
    #[inline(always)]
    fn write_array<const N: usize>(&mut self, bytes: [u8; N]) {
        let Some((slot, rest)) = std::mem::take(&mut self.rest).split_first_chunk_mut::<N>() else {
            self.marks |= HIGH_BITS;
            return;
        };
        *slot = bytes;
        self.rest = rest;
    }

    #[allow(clippy::inline_always)] // See `write_array`.
    #[inline(always)]
    fn write_slice(&mut self, bytes: &[u8]) {
        if let Some(slot) = self.next_slot(bytes.len()) {
            copy_short(slot, bytes, false);
        }
    }

    #[allow(clippy::inline_always)] // See `write_array`.
    #[inline(always)]
    fn write_string(&mut self, tag: Option<u8>, value: &str) {
        let bytes = value.as_bytes();
        let [high, low] = (bytes.len() as u16).to_be_bytes();
        match tag {
            Some(tag) => self.write_headed(&[tag, high, low], bytes),
            None => self.write_headed(&[high, low], bytes),
        }
    }

    #[inline]
    fn write_locally<R>(&mut self, write: impl FnOnce(&mut Self) -> R) -> R {
        let mut local = SizedWriter {
            rest: std::mem::take(&mut self.rest),
            marks: self.marks,
        };
        let result = write(&mut local);
        *self = local;
        result
    }
}

/// Copies `src` into `dst`, which has the same length, and with `mark` true returns
/// the [`unprintable_marks`] of `src`, else 0.
///
/// Up to 16 bytes are copied as two overlapping words of 4 or 8 bytes, or byte by
/// byte below 4, which is cheaper than a call to `memcpy` for the short values most
/// packets carry, and the marks come from the same words. The common 4 to 8 bytes
/// are tested first.
#[allow(clippy::inline_always)] // See `SizedWriter::write_array`.
#[inline(always)]
fn copy_short(dst: &mut [u8], src: &[u8], mark: bool) -> u64 {
    let len = src.len();
    if dst.len() != len {
        return HIGH_BITS;
    }
    if len.wrapping_sub(4) <= 4 {
        let (Some(first), Some(last)) = (src.first_chunk::<4>(), src.last_chunk::<4>()) else {
            return HIGH_BITS;
        };
        let word =
            u64::from(u32::from_le_bytes(*first)) | u64::from(u32::from_le_bytes(*last)) << 32;
        copy_ends(dst, first, last);
        return if mark { unprintable_marks(word) } else { 0 };
    }
    if len.wrapping_sub(9) <= 7 {
        let (Some(first), Some(last)) = (src.first_chunk::<8>(), src.last_chunk::<8>()) else {
            return HIGH_BITS;
        };
        let words = (u64::from_le_bytes(*first), u64::from_le_bytes(*last));
        copy_ends(dst, first, last);
        return if mark {
            unprintable_marks(words.0) | unprintable_marks(words.1)
        } else {
            0
        };
    }
    if len.wrapping_sub(17) <= 15 && !mark {
        let (Some(first), Some(last)) = (src.first_chunk::<16>(), src.last_chunk::<16>()) else {
            return HIGH_BITS;
        };
        copy_ends(dst, first, last);
        return 0;
    }
    if len > 16 {
        dst.copy_from_slice(src);
        return if !mark || is_printable_ascii(src) {
            0
        } else {
            HIGH_BITS
        };
    }
    // Up to 3 bytes, padded with spaces, which are printable.
    let mut word = [b' '; 8];
    for ((slot, padded), &byte) in dst.iter_mut().zip(&mut word).zip(src) {
        *slot = byte;
        *padded = byte;
    }
    if mark {
        unprintable_marks(u64::from_le_bytes(word))
    } else {
        0
    }
}

/// Writes `first` at the start of `dst` and `last` at its end, which overlap when
/// `dst` is shorter than both together.
#[allow(clippy::inline_always)] // See `SizedWriter::write_array`.
#[inline(always)]
fn copy_ends<const N: usize>(dst: &mut [u8], first: &[u8; N], last: &[u8; N]) {
    if let Some(slot) = dst.first_chunk_mut::<N>() {
        *slot = *first;
    }
    if let Some(slot) = dst.last_chunk_mut::<N>() {
        *slot = *last;
    }
}

/// Returns a word whose bytes have their high bit set where `word` has a byte
/// outside printable ASCII, 0x20 to 0x7E, and maybe in bytes above it, because a
/// flagged byte can carry or borrow into the next one. Other bits carry no meaning:
/// callers or the results together and test the high bits once at the end.
#[allow(clippy::inline_always)] // See `SizedWriter::write_array`.
#[inline(always)]
fn unprintable_marks(word: u64) -> u64 {
    const EVERY_BYTE: u64 = 0x0101_0101_0101_0101;
    // Below 0x20, subtracting 0x20 borrows the high bit. Adding 1 to 0x7F sets it, and
    // above 0x7F it is set already.
    word.wrapping_sub(EVERY_BYTE * 0x20) | word.wrapping_add(EVERY_BYTE) | word
}

/// The high bit of every byte of a word.
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

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
