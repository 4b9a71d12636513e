//! Small validated values shared by every packet: packet identifiers, QoS levels,
//! protocol versions, client identifiers and subscription options.
//!
//! Each type is built through `TryFrom` or `FromStr`, so an invalid value cannot
//! exist past the point where it was parsed. Nothing here does I/O.

use std::fmt;
use std::num::NonZeroU16;
use std::str::FromStr;

use bytestring::ByteString;

/// MQTT protocol level, the byte after the protocol name in CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtocolVersion {
    /// MQTT 3.1, protocol name "MQIsdp", level 3. Only CONNECT differs from 3.1.1.
    V3_1,
    /// MQTT 3.1.1, protocol name "MQTT", level 4.
    V3_1_1,
    /// MQTT 5.0, protocol name "MQTT", level 5.
    V5,
}

impl ProtocolVersion {
    /// Returns the protocol level byte sent in CONNECT.
    #[must_use]
    pub fn level(self) -> u8 {
        match self {
            Self::V3_1 => 3,
            Self::V3_1_1 => 4,
            Self::V5 => 5,
        }
    }

    /// Returns `true` for MQTT 5.0, the only version with properties and reason codes.
    #[must_use]
    pub fn is_v5(self) -> bool {
        self == Self::V5
    }
}

impl TryFrom<u8> for ProtocolVersion {
    type Error = u8;

    /// Parses a protocol level byte, returning it unchanged when it is not 3, 4 or 5.
    fn try_from(level: u8) -> Result<Self, u8> {
        match level {
            3 => Ok(Self::V3_1),
            4 => Ok(Self::V3_1_1),
            5 => Ok(Self::V5),
            other => Err(other),
        }
    }
}

/// Packet identifier of QoS 1 and 2 flows, SUBSCRIBE and UNSUBSCRIBE, never zero
/// [MQTT-2.2.1-3].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PacketId(NonZeroU16);

impl PacketId {
    /// The smallest packet identifier, 1.
    pub const MIN: Self = Self(NonZeroU16::MIN);
    /// The largest packet identifier, 65,535.
    pub const MAX: Self = Self(NonZeroU16::MAX);

    /// Returns the identifier as sent on the wire.
    #[must_use]
    #[inline]
    pub fn get(self) -> u16 {
        self.0.get()
    }

    /// Returns the identifier after this one, wrapping from 65,535 to 1.
    #[must_use]
    pub fn next_wrapping(self) -> Self {
        Self(self.0.checked_add(1).unwrap_or(NonZeroU16::MIN))
    }
}

impl TryFrom<u16> for PacketId {
    type Error = InvalidValue;

    fn try_from(value: u16) -> Result<Self, InvalidValue> {
        NonZeroU16::new(value)
            .map(Self)
            .ok_or(InvalidValue::ZeroPacketId)
    }
}

impl From<NonZeroU16> for PacketId {
    #[inline]
    fn from(value: NonZeroU16) -> Self {
        Self(value)
    }
}

impl fmt::Display for PacketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Quality of service level of a message or subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum QoS {
    /// At most once: no acknowledgement.
    #[default]
    AtMostOnce = 0,
    /// At least once: PUBLISH, PUBACK.
    AtLeastOnce = 1,
    /// Exactly once: PUBLISH, PUBREC, PUBREL, PUBCOMP.
    ExactlyOnce = 2,
}

impl QoS {
    /// Returns the level as a number from 0 to 2.
    #[must_use]
    pub fn level(self) -> u8 {
        self as u8
    }
}

impl TryFrom<u8> for QoS {
    type Error = InvalidValue;

    /// Parses a QoS level; 3 is reserved and rejected [MQTT-3.3.1-4].
    fn try_from(value: u8) -> Result<Self, InvalidValue> {
        match value {
            0 => Ok(Self::AtMostOnce),
            1 => Ok(Self::AtLeastOnce),
            2 => Ok(Self::ExactlyOnce),
            other => Err(InvalidValue::QoS(other)),
        }
    }
}

/// Client identifier: a UTF-8 string of at most 65,535 bytes without U+0000, possibly
/// empty (the server then assigns one, or in MQTT 3.1.1 requires clean session).
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct ClientId(ByteString);

impl ClientId {
    /// Returns the identifier as a string slice.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Returns the underlying shared string.
    #[must_use]
    pub fn as_byte_string(&self) -> &ByteString {
        &self.0
    }

    /// Returns `true` when the identifier is the empty string.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl TryFrom<ByteString> for ClientId {
    type Error = InvalidValue;

    fn try_from(value: ByteString) -> Result<Self, InvalidValue> {
        check_mqtt_string(&value)?;
        Ok(Self(value))
    }
}

impl FromStr for ClientId {
    type Err = InvalidValue;

    fn from_str(value: &str) -> Result<Self, InvalidValue> {
        Self::try_from(ByteString::from(value))
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Server handling of retained messages when a subscription is made
/// (MQTT 5.0 section 3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RetainHandling {
    /// Send retained messages at the time of the subscribe.
    #[default]
    SendAtSubscribe = 0,
    /// Send retained messages only if the subscription did not exist before.
    SendAtNewSubscribe = 1,
    /// Do not send retained messages.
    DoNotSend = 2,
}

impl TryFrom<u8> for RetainHandling {
    type Error = InvalidValue;

    /// Parses the two retain handling bits; 3 is reserved [MQTT-3.8.3-5].
    fn try_from(value: u8) -> Result<Self, InvalidValue> {
        match value {
            0 => Ok(Self::SendAtSubscribe),
            1 => Ok(Self::SendAtNewSubscribe),
            2 => Ok(Self::DoNotSend),
            other => Err(InvalidValue::RetainHandling(other)),
        }
    }
}

/// Options byte of one SUBSCRIBE entry. MQTT 3.1.1 carries only `qos`; the codec
/// rejects the other options when encoding for 3.1.1 unless they are at their defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SubscriptionOptions {
    /// Maximum QoS the server may use to send matching messages.
    pub qos: QoS,
    /// Do not receive messages published by this same client (v5 only).
    pub no_local: bool,
    /// Keep the RETAIN flag as published instead of clearing it (v5 only).
    pub retain_as_published: bool,
    /// When to send retained messages (v5 only).
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    /// Returns default options with the given maximum QoS.
    #[must_use]
    pub fn with_qos(qos: QoS) -> Self {
        Self {
            qos,
            ..Self::default()
        }
    }
}

/// A value that breaks a rule of its type, returned by the `TryFrom` and `FromStr`
/// conversions in this crate's codec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidValue {
    /// Packet identifier 0 is reserved [MQTT-2.2.1-3].
    #[error("packet identifier must not be zero")]
    ZeroPacketId,
    /// QoS levels are 0, 1 and 2 [MQTT-3.3.1-4].
    #[error("invalid QoS {0}, expected 0, 1 or 2")]
    QoS(u8),
    /// Retain handling is 0, 1 or 2 [MQTT-3.8.3-5].
    #[error("invalid retain handling {0}, expected 0, 1 or 2")]
    RetainHandling(u8),
    /// An MQTT string may hold at most 65,535 bytes [MQTT-1.5.4-1].
    #[error("string of {0} bytes is longer than 65535")]
    StringTooLong(usize),
    /// MQTT strings must not contain U+0000 [MQTT-1.5.4-2].
    #[error("string contains the null character U+0000")]
    NullCharacter,
    /// MQTT strings should not contain control characters (U+0001 to U+001F, U+007F to
    /// U+009F) or Unicode noncharacters, and a receiver may treat a packet containing
    /// them as malformed (MQTT 5.0 section 1.5.4); Mosquitto does, so they are rejected.
    #[error("string contains the disallowed character {0:?}")]
    DisallowedCharacter(char),
    /// A topic name must be at least one character long [MQTT-4.7.3-1].
    #[error("topic name is empty")]
    EmptyTopic,
    /// A topic name must not contain `+` or `#` [MQTT-3.3.2-2].
    #[error("topic name {0:?} contains a wildcard")]
    WildcardInTopicName(String),
    /// A topic filter must be at least one character long [MQTT-4.7.3-1].
    #[error("topic filter is empty")]
    EmptyFilter,
    /// `#` must be the last level of a filter, alone in its level [MQTT-4.7.1-1].
    #[error("topic filter {0:?} has `#` that is not alone in the last level")]
    MisplacedMultiLevelWildcard(String),
    /// `+` must occupy a whole level [MQTT-4.7.1-2].
    #[error("topic filter {0:?} has `+` that is not alone in its level")]
    MisplacedSingleLevelWildcard(String),
    /// A shared subscription is `$share/{ShareName}/{filter}` with a non-empty share name
    /// without wildcards and a non-empty filter [MQTT-4.8.2-1] [MQTT-4.8.2-2].
    #[error("shared subscription {0:?} is not of the form $share/name/filter")]
    InvalidSharedSubscription(String),
    /// A subscription identifier is from 1 to 268,435,455 (MQTT 5.0 section 3.8.2.1.2).
    #[error("subscription identifier {0} is outside 1..=268435455")]
    SubscriptionIdentifier(u32),
}

/// Checks the rules every MQTT UTF-8 string follows: at most 65,535 bytes, no U+0000
/// [MQTT-1.5.4-1] [MQTT-1.5.4-2], and none of the characters [`disallowed_character`]
/// finds. Rust strings are valid UTF-8 already.
pub(crate) fn check_mqtt_string(value: &str) -> Result<(), InvalidValue> {
    if value.len() > usize::from(u16::MAX) {
        return Err(InvalidValue::StringTooLong(value.len()));
    }
    match disallowed_character(value) {
        None => Ok(()),
        Some('\0') => Err(InvalidValue::NullCharacter),
        Some(character) => Err(InvalidValue::DisallowedCharacter(character)),
    }
}

/// Returns the first character of `value` that an MQTT string must or should not
/// contain: U+0000, a control character (U+0001 to U+001F, U+007F to U+009F) or a
/// Unicode noncharacter (U+FDD0 to U+FDEF, and U+xFFFE and U+xFFFF in every plane).
#[inline]
pub(crate) fn disallowed_character(value: &str) -> Option<char> {
    // Printable ASCII is by far the common case and needs no per-character decoding,
    // so only that test is inlined.
    if is_printable_ascii(value.as_bytes()) {
        return None;
    }
    find_disallowed_character(value)
}

#[inline(never)]
fn find_disallowed_character(value: &str) -> Option<char> {
    value.chars().find(|&character| {
        let code = u32::from(character);
        code <= 0x1F
            || (0x7F..=0x9F).contains(&code)
            || (0xFDD0..=0xFDEF).contains(&code)
            || code & 0xFFFE == 0xFFFE
    })
}

/// Returns `true` when every byte of `bytes` is printable ASCII, 0x20 to 0x7E.
#[inline]
pub(crate) fn is_printable_ascii(bytes: &[u8]) -> bool {
    // Most strings in a packet are short: up to 16 bytes, two eight-byte words (which
    // overlap below 16) are tested in general registers, without the block function.
    let words = if let (Some(first), Some(last)) =
        (bytes.first_chunk::<8>(), bytes.last_chunk::<8>())
    {
        (u64::from_le_bytes(*first), u64::from_le_bytes(*last))
    } else if let (Some(first), Some(last)) = (bytes.first_chunk::<4>(), bytes.last_chunk::<4>()) {
        let first = u64::from(u32::from_le_bytes(*first));
        let last = u64::from(u32::from_le_bytes(*last));
        let word = first | last << 32;
        (word, word)
    } else {
        return no_byte_flagged(bytes, |byte| !is_printable_byte(byte));
    };
    if bytes.len() > 16 {
        return no_byte_flagged(bytes, |byte| !is_printable_byte(byte));
    }
    unprintable_flags(words.0) | unprintable_flags(words.1) == 0
}

/// Returns a word that is not 0 when some byte of `word` is outside 0x20 to 0x7E. A
/// byte below 0x20 borrows into its high bit when 0x20 is subtracted, and a byte
/// above 0x7E sets its high bit when 1 is added or has it set already. A carry or
/// borrow can flag a higher byte by mistake only after a lower byte was flagged, so
/// the test is exact, but the flags do not say which byte it was.
#[inline]
fn unprintable_flags(word: u64) -> u64 {
    const EVERY_BYTE: u64 = 0x0101_0101_0101_0101;
    let below = word.wrapping_sub(EVERY_BYTE * 0x20) & !word;
    let above = word.wrapping_add(EVERY_BYTE) | word;
    (below | above) & (EVERY_BYTE * 0x80)
}

/// Returns `true` for a printable ASCII byte, 0x20 to 0x7E.
#[inline]
pub(crate) fn is_printable_byte(byte: u8) -> bool {
    (0x20..0x7F).contains(&byte)
}

/// Returns `true` when `flagged` returns `false` for every byte of `bytes`.
///
/// The bytes are tested in blocks of 16 without early exit, which the compiler turns
/// into a few SIMD instructions per block. Blocks may overlap and a slice shorter than
/// 16 bytes is padded with spaces, so `flagged` must not flag a space, and it may see
/// a byte twice.
#[inline]
pub(crate) fn no_byte_flagged(bytes: &[u8], flagged: impl Fn(u8) -> bool + Copy) -> bool {
    const SPACES: u64 = u64::from_le_bytes([b' '; 8]);

    // Kept out of line: inlined, the compiler assembles a padded block byte by byte.
    #[inline(never)]
    fn block_flagged(block: &[u8; 16], flagged: impl Fn(u8) -> bool) -> bool {
        #[allow(clippy::needless_bitwise_bool)] // Bitwise on purpose, see above.
        block.iter().fold(false, |any, &byte| any | flagged(byte))
    }

    if let Some(last) = bytes.last_chunk::<16>() {
        let blocks = bytes.chunks_exact(16).fold(false, |any, chunk| {
            any | <&[u8; 16]>::try_from(chunk).is_ok_and(|block| block_flagged(block, flagged))
        });
        return !(blocks | block_flagged(last, flagged));
    }
    // A shorter slice fits one block as two eight-byte halves, which overlap when it
    // is shorter than the block.
    let (low, high) = if let (Some(first), Some(last)) =
        (bytes.first_chunk::<8>(), bytes.last_chunk::<8>())
    {
        (u64::from_le_bytes(*first), u64::from_le_bytes(*last))
    } else if let (Some(first), Some(last)) = (bytes.first_chunk::<4>(), bytes.last_chunk::<4>()) {
        let first = u64::from(u32::from_le_bytes(*first));
        let last = u64::from(u32::from_le_bytes(*last));
        (first | last << 32, SPACES)
    } else {
        let mut padded = [b' '; 8];
        for (slot, &byte) in padded.iter_mut().zip(bytes) {
            *slot = byte;
        }
        (u64::from_le_bytes(padded), SPACES)
    };
    let block = (u128::from(low) | u128::from(high) << 64).to_le_bytes();
    !block_flagged(&block, flagged)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn disallowed_characters_found() {
        assert_eq!(disallowed_character("plain/topic"), None);
        assert_eq!(disallowed_character("caf\u{e9}"), None);
        assert_eq!(disallowed_character("a\u{0}b"), Some('\u{0}'));
        assert_eq!(disallowed_character("tab\there"), Some('\t'));
        assert_eq!(disallowed_character("x\u{85}"), Some('\u{85}'));
        assert_eq!(disallowed_character("x\u{FDD0}"), Some('\u{FDD0}'));
        assert_eq!(disallowed_character("x\u{1FFFF}"), Some('\u{1FFFF}'));
    }

    #[test]
    fn printable_ascii_checked_per_byte() {
        assert!(is_printable_ascii(b""));
        assert!(is_printable_ascii(b" ~"));
        assert!(is_printable_ascii(b"sensors/device-0042/temperature"));
        for len in 0..40 {
            assert!(is_printable_ascii(&vec![b'a'; len]), "length {len}");
        }
        // Every position in slices that take each way through the words and blocks.
        for len in [1, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 100] {
            for position in 0..len {
                for bad in [0x00, 0x1F, 0x7F, 0x80, 0xC3, 0xFF] {
                    let mut bytes = vec![b'a'; len];
                    bytes[position] = bad;
                    assert!(
                        !is_printable_ascii(&bytes),
                        "byte {bad:#04x} at {position} of {len}"
                    );
                }
            }
        }
    }

    #[test]
    fn mqtt_string_rules_checked() {
        assert_eq!(check_mqtt_string("ok"), Ok(()));
        assert_eq!(
            check_mqtt_string("a\u{0}"),
            Err(InvalidValue::NullCharacter)
        );
        assert_eq!(
            check_mqtt_string("a\u{7f}"),
            Err(InvalidValue::DisallowedCharacter('\u{7f}'))
        );
        let long = "a".repeat(65_536);
        assert_eq!(
            check_mqtt_string(&long),
            Err(InvalidValue::StringTooLong(65_536))
        );
    }
}
