//! Parser of the byte notation used by the conformance sequences.
//!
//! A payload is a list of tokens separated by whitespace:
//!
//! - plain hex digits, two per byte, any even number of them (`20`, `ffffffff`);
//! - `rN` and `vN`: the MQTT variable byte integer of decimal `N`. Values of 2^28 and
//!   more are encoded anyway, with as many bytes as they need, so that sequences can
//!   send a remaining length that a receiver must reject;
//! - `iN`: one byte;
//! - `HN`, `kN`, `mN`, `sN`: a two-byte big-endian integer (generic, keep-alive, packet
//!   identifier, string length);
//! - `LN`: a four-byte big-endian integer;
//! - `'text'`: the UTF-8 bytes of the text between the quotes, which may contain spaces.
//!
//! This module only turns text into bytes; it knows nothing about MQTT packets.

use std::fmt;

/// Error in a payload written in the sequence notation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotationError {
    /// The token that failed, as written.
    pub token: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl fmt::Display for NotationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid token `{}`: {}", self.token, self.reason)
    }
}

impl std::error::Error for NotationError {}

/// Parses a payload in the sequence notation into its bytes.
pub fn parse_payload(text: &str) -> Result<Vec<u8>, NotationError> {
    let mut bytes = Vec::new();
    let mut rest = text.trim_start();

    while !rest.is_empty() {
        let token_len = if rest.starts_with('\'') {
            quoted_token_len(rest)?
        } else {
            rest.find(char::is_whitespace).unwrap_or(rest.len())
        };
        let (token, after) = rest.split_at(token_len);
        push_token(token, &mut bytes)?;
        rest = after.trim_start();
    }

    Ok(bytes)
}

/// Appends the MQTT variable byte integer encoding of `value` to `out`, without the
/// four-byte limit of the specification.
pub fn push_varint(mut value: u64, out: &mut Vec<u8>) {
    loop {
        let low = (value % 128) as u8;
        value /= 128;
        if value == 0 {
            out.push(low);
            return;
        }
        out.push(low | 0x80);
    }
}

/// Formats bytes as space-separated lowercase hex pairs, for failure messages.
pub fn to_hex(bytes: &[u8]) -> String {
    let pairs: Vec<String> = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    pairs.join(" ")
}

/// Returns the length of the quoted token at the start of `rest`, quotes included.
fn quoted_token_len(rest: &str) -> Result<usize, NotationError> {
    let after_open = rest.get(1..).unwrap_or_default();
    match after_open.find('\'') {
        Some(close) => Ok(close + 2),
        None => Err(NotationError {
            token: rest.to_owned(),
            reason: "missing closing quote",
        }),
    }
}

fn push_token(token: &str, out: &mut Vec<u8>) -> Result<(), NotationError> {
    let error = |reason| NotationError {
        token: token.to_owned(),
        reason,
    };

    if let Some(text) = token.strip_prefix('\'') {
        let text = text
            .strip_suffix('\'')
            .ok_or_else(|| error("missing closing quote"))?;
        out.extend_from_slice(text.as_bytes());
        return Ok(());
    }

    let mut chars = token.chars();
    let prefix = chars.next().ok_or_else(|| error("empty token"))?;
    let digits = chars.as_str();
    match prefix {
        'r' | 'v' => push_varint(parse_decimal(digits).map_err(error)?, out),
        'i' => push_fixed(token, digits, 1, out)?,
        'H' | 'k' | 'm' | 's' => push_fixed(token, digits, 2, out)?,
        'L' => push_fixed(token, digits, 4, out)?,
        _ => push_hex(token, out)?,
    }
    Ok(())
}

/// Appends decimal `digits` as a big-endian integer of `width` bytes.
fn push_fixed(
    token: &str,
    digits: &str,
    width: usize,
    out: &mut Vec<u8>,
) -> Result<(), NotationError> {
    let value = parse_decimal(digits).map_err(|reason| NotationError {
        token: token.to_owned(),
        reason,
    })?;
    if width < 8 && value >> (width * 8) != 0 {
        return Err(NotationError {
            token: token.to_owned(),
            reason: "value does not fit in the integer width",
        });
    }

    let be = value.to_be_bytes();
    out.extend(be.iter().skip(be.len() - width));
    Ok(())
}

fn parse_decimal(digits: &str) -> Result<u64, &'static str> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("expected a decimal number after the prefix");
    }
    digits.parse().map_err(|_| "decimal number too large")
}

fn push_hex(token: &str, out: &mut Vec<u8>) -> Result<(), NotationError> {
    let error = |reason| NotationError {
        token: token.to_owned(),
        reason,
    };
    if token.len() % 2 != 0 {
        return Err(error("hex bytes need an even number of digits"));
    }

    for pair in token.as_bytes().chunks(2) {
        let pair = std::str::from_utf8(pair).map_err(|_| error("not a hex digit"))?;
        let byte = u8::from_str_radix(pair, 16).map_err(|_| error("not a hex digit"))?;
        out.push(byte);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn hex_bytes_single_and_grouped() {
        assert_eq!(parse_payload("20 00").unwrap(), [0x20, 0x00]);
        assert_eq!(parse_payload("ffffffff").unwrap(), [0xff; 4]);
        assert_eq!(parse_payload("746F70").unwrap(), b"top");
        assert_eq!(parse_payload("8A").unwrap(), [0x8a]);
    }

    #[test]
    fn varint_boundaries() {
        let cases: &[(&str, &[u8])] = &[
            ("r0", &[0x00]),
            ("r127", &[0x7f]),
            ("r128", &[0x80, 0x01]),
            ("v16383", &[0xff, 0x7f]),
            ("v16384", &[0x80, 0x80, 0x01]),
            ("r2097151", &[0xff, 0xff, 0x7f]),
            ("r2097152", &[0x80, 0x80, 0x80, 0x01]),
            ("v268435455", &[0xff, 0xff, 0xff, 0x7f]),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_payload(text).unwrap(), *expected, "token {text}");
        }
    }

    #[test]
    fn varint_beyond_four_bytes_encoded_anyway() {
        assert_eq!(
            parse_payload("r268435456").unwrap(),
            [0x80, 0x80, 0x80, 0x80, 0x01]
        );
        assert_eq!(
            parse_payload("v34359738367").unwrap(),
            [0xff, 0xff, 0xff, 0xff, 0x7f]
        );
    }

    #[test]
    fn fixed_width_integers() {
        assert_eq!(parse_payload("i0 i255").unwrap(), [0x00, 0xff]);
        assert_eq!(parse_payload("H10").unwrap(), [0x00, 0x0a]);
        assert_eq!(parse_payload("k60").unwrap(), [0x00, 0x3c]);
        assert_eq!(parse_payload("m1234").unwrap(), [0x04, 0xd2]);
        assert_eq!(parse_payload("s65535").unwrap(), [0xff, 0xff]);
        assert_eq!(parse_payload("L1").unwrap(), [0, 0, 0, 1]);
        assert_eq!(parse_payload("L4294967295").unwrap(), [0xff; 4]);
    }

    #[test]
    fn fixed_width_overflow_rejected() {
        for text in ["i256", "H65536", "m70000", "L4294967296"] {
            let error = parse_payload(text).unwrap_err();
            assert_eq!(error.token, text);
        }
    }

    #[test]
    fn quoted_text_with_spaces() {
        assert_eq!(
            parse_payload("s11 'alive check' 'x'").unwrap(),
            b"\x00\x0balive checkx"
        );
        assert_eq!(parse_payload("''").unwrap(), b"");
        assert_eq!(parse_payload("'#opic'").unwrap(), b"#opic");
    }

    #[test]
    fn quoted_text_is_utf8() {
        assert_eq!(parse_payload("'é'").unwrap(), [0xc3, 0xa9]);
    }

    #[test]
    fn whitespace_runs_and_tabs_ignored() {
        assert_eq!(parse_payload("  40\tr2   m1 ").unwrap(), [0x40, 0x02, 0, 1]);
        assert_eq!(parse_payload("").unwrap(), b"");
    }

    #[test]
    fn full_publish_from_sequences() {
        let bytes = parse_payload("32 r23 s12 'test/publish' m1 'message'").unwrap();
        assert_eq!(bytes[0], 0x32);
        assert_eq!(bytes[1], 23);
        assert_eq!(bytes.len(), 2 + 23);
        assert_eq!(&bytes[2..4], [0, 12]);
        assert_eq!(&bytes[4..16], b"test/publish");
        assert_eq!(&bytes[16..18], [0, 1]);
        assert_eq!(&bytes[18..], b"message");
    }

    #[test]
    fn malformed_tokens_rejected() {
        let cases = [
            ("2", "hex bytes need an even number of digits"),
            ("zz", "not a hex digit"),
            ("r", "expected a decimal number after the prefix"),
            ("rx1", "expected a decimal number after the prefix"),
            ("m-1", "expected a decimal number after the prefix"),
            ("'open", "missing closing quote"),
            ("r99999999999999999999999", "decimal number too large"),
        ];
        for (text, reason) in cases {
            let error = parse_payload(text).unwrap_err();
            assert_eq!(error.reason, reason, "token {text}");
        }
    }

    #[test]
    fn hex_formatting() {
        assert_eq!(to_hex(&[0x40, 0x02, 0xff, 0x0a]), "40 02 ff 0a");
        assert_eq!(to_hex(&[]), "");
    }
}
