//! Topic names, topic filters and the matching between them (MQTT 5.0 section 4.7).
//!
//! `TopicName` and `TopicFilter` are checked once, when built, and cheap to clone
//! afterwards because they share the decoded buffer. Nothing here does I/O.

use std::fmt;
use std::str::FromStr;

use bytestring::ByteString;

use super::types::{check_mqtt_string, is_printable_byte, no_byte_flagged, InvalidValue};

const SHARE_PREFIX: &str = "$share/";

/// A topic name a message is published to: not empty, no `+` or `#`, valid MQTT string.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(ByteString);

impl TopicName {
    /// Returns the name as a string slice.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Returns the underlying shared string.
    #[must_use]
    pub fn as_byte_string(&self) -> &ByteString {
        &self.0
    }

    /// Returns `true` for names starting with `$`, which wildcards at the first level
    /// do not match [MQTT-4.7.2-1].
    #[must_use]
    pub fn is_system(&self) -> bool {
        self.0.starts_with('$')
    }

    /// Wraps `value`, which the caller has found plain with [`is_plain_topic_name`]
    /// and which fits a two-byte length prefix, so no rule needs checking again.
    pub(crate) fn from_plain(value: ByteString) -> Self {
        debug_assert!(is_plain_topic_name(value.as_bytes()) && value.len() <= 65_535);
        Self(value)
    }
}

impl TryFrom<ByteString> for TopicName {
    type Error = InvalidValue;

    fn try_from(value: ByteString) -> Result<Self, InvalidValue> {
        if is_plain_topic_name(value.as_bytes()) && u16::try_from(value.len()).is_ok() {
            return Ok(Self(value));
        }

        check_mqtt_string(&value)?;
        if value.is_empty() {
            return Err(InvalidValue::EmptyTopic);
        }
        // A byte scan: `+` and `#` are ASCII, so they never occur inside a multibyte
        // character. Without early exit it is much faster than a `char` pattern.
        #[allow(clippy::needless_bitwise_bool)] // Bitwise on purpose, see above.
        let wildcard = value
            .bytes()
            .fold(false, |found, byte| found | (byte == b'+') | (byte == b'#'));
        if wildcard {
            return Err(InvalidValue::WildcardInTopicName(value.to_string()));
        }
        Ok(Self(value))
    }
}

/// Returns `true` for the common topic name that passes every topic rule and the
/// UTF-8 check in one byte scan: not empty, printable ASCII only, no `+` or `#`.
#[inline]
pub(crate) fn is_plain_topic_name(bytes: &[u8]) -> bool {
    // `+` (0x2B) and `#` (0x23) differ only in bit 3, so clearing that bit finds both
    // with one comparison. No lazy `||`: a branch would stop the check vectorizing.
    #[allow(clippy::needless_bitwise_bool)]
    fn not_plain(byte: u8) -> bool {
        !is_printable_byte(byte) | (byte & !0x08 == b'#')
    }
    !bytes.is_empty() && no_byte_flagged(bytes, not_plain)
}

impl FromStr for TopicName {
    type Err = InvalidValue;

    fn from_str(value: &str) -> Result<Self, InvalidValue> {
        Self::try_from(ByteString::from(value))
    }
}

impl TryFrom<&str> for TopicName {
    type Error = InvalidValue;

    fn try_from(value: &str) -> Result<Self, InvalidValue> {
        value.parse()
    }
}

impl TryFrom<String> for TopicName {
    type Error = InvalidValue;

    fn try_from(value: String) -> Result<Self, InvalidValue> {
        Self::try_from(ByteString::from(value))
    }
}

impl fmt::Debug for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A topic filter of a subscription, with wildcards placed as the specification allows,
/// and, for `$share/{ShareName}/{filter}`, the share name split off.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TopicFilter {
    /// The filter as written, including any `$share/` prefix.
    full: ByteString,
    /// Byte offset of the filter proper within `full`; 0 unless shared.
    filter_start: usize,
    /// Whether the filter proper contains `+` or `#`. Without them only an equal topic
    /// name matches, which one comparison finds.
    wildcards: bool,
}

impl TopicFilter {
    /// Returns the filter as written, including any `$share/name/` prefix.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// Returns the underlying shared string, as sent on the wire.
    #[must_use]
    pub fn as_byte_string(&self) -> &ByteString {
        &self.full
    }

    /// Returns the share name of a shared subscription, or `None`.
    #[must_use]
    pub fn share_name(&self) -> Option<&str> {
        if self.filter_start == 0 {
            return None;
        }
        self.full.get(SHARE_PREFIX.len()..self.filter_start - 1)
    }

    /// Returns the filter that topic names are matched against, without the share prefix.
    #[must_use]
    pub fn filter(&self) -> &str {
        self.full.get(self.filter_start..).unwrap_or_default()
    }

    /// Returns `true` when the filter contains `+` or `#`.
    #[must_use]
    pub fn has_wildcards(&self) -> bool {
        self.wildcards
    }

    /// Returns `true` when `topic` matches this filter. A filter starting with a wildcard
    /// does not match a topic starting with `$` [MQTT-4.7.2-1].
    #[must_use]
    pub fn matches(&self, topic: &TopicName) -> bool {
        let filter = self.filter().as_bytes();
        let topic = topic.as_str().as_bytes();
        if !self.wildcards {
            return filter == topic;
        }
        if topic.first() == Some(&b'$') && matches!(filter.first(), Some(b'+' | b'#')) {
            return false;
        }

        // Splitting on the byte `/` is safe because it never occurs inside a multibyte
        // character, and it avoids the much slower search for a `char` pattern.
        let mut topic_levels = topic.split(|&byte| byte == b'/');
        for filter_level in filter.split(|&byte| byte == b'/') {
            match (filter_level, topic_levels.next()) {
                (b"#", _) => return true,
                (b"+", Some(_)) => {}
                (expected, Some(level)) if expected == level => {}
                _ => return false,
            }
        }
        topic_levels.next().is_none()
    }
}

impl TryFrom<ByteString> for TopicFilter {
    type Error = InvalidValue;

    fn try_from(full: ByteString) -> Result<Self, InvalidValue> {
        check_mqtt_string(&full)?;
        if full.is_empty() {
            return Err(InvalidValue::EmptyFilter);
        }
        let filter_start = shared_filter_start(&full)?;
        let filter = full.get(filter_start..).unwrap_or_default();
        check_wildcards(filter, &full)?;
        let wildcards = filter.contains(['+', '#']);
        Ok(Self {
            full,
            filter_start,
            wildcards,
        })
    }
}

impl FromStr for TopicFilter {
    type Err = InvalidValue;

    fn from_str(value: &str) -> Result<Self, InvalidValue> {
        Self::try_from(ByteString::from(value))
    }
}

impl TryFrom<&str> for TopicFilter {
    type Error = InvalidValue;

    fn try_from(value: &str) -> Result<Self, InvalidValue> {
        value.parse()
    }
}

impl TryFrom<String> for TopicFilter {
    type Error = InvalidValue;

    fn try_from(value: String) -> Result<Self, InvalidValue> {
        Self::try_from(ByteString::from(value))
    }
}

impl fmt::Debug for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.full, f)
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

/// Returns where the filter proper starts: after `$share/{ShareName}/` for a shared
/// subscription, else 0. The share name is non-empty and has no `/`, `+` or `#`
/// [MQTT-4.8.2-1], and the filter after it is non-empty [MQTT-4.8.2-2].
fn shared_filter_start(full: &str) -> Result<usize, InvalidValue> {
    let Some(rest) = full.strip_prefix(SHARE_PREFIX) else {
        return Ok(0);
    };
    let invalid = || InvalidValue::InvalidSharedSubscription(full.to_owned());
    let (share_name, filter) = rest.split_once('/').ok_or_else(invalid)?;
    if share_name.is_empty() || share_name.contains(['+', '#']) || filter.is_empty() {
        return Err(invalid());
    }
    Ok(SHARE_PREFIX.len() + share_name.len() + 1)
}

/// Checks that `#` is alone in the last level and `+` alone in its level
/// [MQTT-4.7.1-1] [MQTT-4.7.1-2]. `full` is only for the error message.
fn check_wildcards(filter: &str, full: &str) -> Result<(), InvalidValue> {
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(InvalidValue::MisplacedMultiLevelWildcard(full.to_owned()));
        }
        if level.contains('+') && level != "+" {
            return Err(InvalidValue::MisplacedSingleLevelWildcard(full.to_owned()));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn topic_name_rules() {
        assert_eq!(TopicName::try_from("a/b").unwrap().as_str(), "a/b");
        assert!(TopicName::try_from("caf\u{e9}/\u{2A6D4}").is_ok());
        assert_eq!(TopicName::try_from(""), Err(InvalidValue::EmptyTopic));
        assert!(matches!(
            TopicName::try_from("a/+"),
            Err(InvalidValue::WildcardInTopicName(_))
        ));
        assert!(matches!(
            TopicName::try_from("\u{e9}/#"),
            Err(InvalidValue::WildcardInTopicName(_))
        ));
        assert_eq!(
            TopicName::try_from("a\u{0}"),
            Err(InvalidValue::NullCharacter)
        );
        assert_eq!(
            TopicName::try_from("a\u{1f}"),
            Err(InvalidValue::DisallowedCharacter('\u{1f}'))
        );
        let long = "a".repeat(65_536);
        assert_eq!(
            TopicName::try_from(long.as_str()),
            Err(InvalidValue::StringTooLong(65_536))
        );
    }

    #[test]
    fn plain_topic_names_found_per_byte() {
        assert!(!is_plain_topic_name(b""));
        assert!(is_plain_topic_name(b"a"));
        assert!(is_plain_topic_name(b"sensors/device-0042/temperature"));
        // Every position in names that take each way through the byte blocks.
        for len in [1, 3, 4, 7, 8, 9, 15, 16, 17, 31, 32, 33] {
            for position in 0..len {
                for other in [b'+', b'#', 0x00, 0x1F, 0x7F, 0xC3] {
                    let mut name = vec![b'a'; len];
                    name[position] = other;
                    assert!(
                        !is_plain_topic_name(&name),
                        "byte {other:#04x} at {position} of {len}"
                    );
                }
                // Bytes one bit away from `+` and `#` are plain.
                for neighbour in [b'!', b'\'', b'*', b'/', b'3', b'k'] {
                    let mut name = vec![b'a'; len];
                    name[position] = neighbour;
                    assert!(is_plain_topic_name(&name), "{name:?}");
                }
            }
        }
    }

    #[test]
    fn topic_filter_wildcards_and_shares() {
        let shared = TopicFilter::try_from("$share/group/a/+/#").unwrap();
        assert_eq!(shared.share_name(), Some("group"));
        assert_eq!(shared.filter(), "a/+/#");
        assert!(shared.has_wildcards());
        assert!(TopicFilter::try_from("a/#/b").is_err());
        assert!(TopicFilter::try_from("a+/b").is_err());
        assert!(TopicFilter::try_from("$share//a").is_err());
        assert!(TopicFilter::try_from("$share/g").is_err());
    }

    #[test]
    fn topic_filter_matching() {
        let topic = |name: &str| TopicName::try_from(name).unwrap();
        let filter = |text: &str| TopicFilter::try_from(text).unwrap();
        assert!(filter("a/+/c").matches(&topic("a/b/c")));
        assert!(filter("a/#").matches(&topic("a")));
        assert!(filter("a/#").matches(&topic("a/b/c")));
        assert!(!filter("a/+").matches(&topic("a/b/c")));
        assert!(!filter("#").matches(&topic("$SYS/x")));
        assert!(!filter("+/x").matches(&topic("$SYS/x")));
        assert!(filter("$SYS/#").matches(&topic("$SYS/x")));
        assert!(filter("$share/g/a/+").matches(&topic("a/b")));
    }

    #[test]
    fn topic_filter_matching_edge_cases() {
        let topic = |name: &str| TopicName::try_from(name).unwrap();
        let filter = |text: &str| TopicFilter::try_from(text).unwrap();
        let cases = [
            ("a/b", "a/b", true),
            ("a/b", "a/b/", false),
            ("a/b", "a/bc", false),
            ("a/b/", "a/b/", true),
            ("/a", "/a", true),
            ("+", "a", true),
            ("+", "a/b", false),
            ("+", "/", false),
            ("+/+", "/", true),
            ("+/#", "a", true),
            ("#", "a/b/c", true),
            ("#", "/", true),
            ("a/+/c", "a//c", true),
            ("a/+/c", "a/b/c/d", false),
            ("a/#", "ab", false),
            ("#", "$SYS", false),
            ("+", "$SYS", false),
            ("$SYS", "$SYS", true),
            ("$SYS/+", "$SYS/x", true),
            ("caf\u{e9}/+", "caf\u{e9}/x", true),
            ("$share/g/+", "$x", false),
            ("$share/g/a", "a", true),
            ("$share/g/a", "$share/g/a", false),
        ];
        for (filter_text, name, expected) in cases {
            assert_eq!(
                filter(filter_text).matches(&topic(name)),
                expected,
                "{filter_text} against {name}"
            );
        }
    }
}
