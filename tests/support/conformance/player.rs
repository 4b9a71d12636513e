//! Scripted fake broker that plays one sequence against one client connection.
//!
//! The player listens on a loopback port, accepts one connection, checks the client's
//! default CONNECT and replies with the default CONNACK, plays the steps and ends with
//! the final check: either the client still acknowledges a QoS 1 PUBLISH, or it has
//! closed the connection. Every accept and read is bounded by [`STEP_TIMEOUT`], so a
//! silent client fails the sequence with a message instead of hanging the run. The
//! player never starts a client: the caller does, after [`Player::bind`] has returned.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

use crate::notation::{push_varint, to_hex};
use crate::sequences::{Sequence, Step};

/// Bound of every accept and read of the player.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// Client identifier of the default CONNECT.
pub const CLIENT_ID: &str = "fuzzish";

/// Keep-alive of the default CONNECT, in seconds.
pub const KEEP_ALIVE_SECS: u16 = 60;

/// Receive Maximum of the default v5 CONNECT and CONNACK.
pub const RECEIVE_MAXIMUM: u16 = 20;

/// Packet identifier of the final check's PUBLISH.
const ALIVE_CHECK_ID: u16 = 65535;

/// Largest packet the player reads; the client under test sends far smaller ones.
const MAX_PACKET_BODY: usize = 1 << 20;

const PROPERTY_TOPIC_ALIAS: u8 = 0x23;
const PROPERTY_REASON_STRING: u8 = 0x1f;
const PROPERTY_USER: u8 = 0x26;

/// Fake broker bound to a loopback port, ready for one client connection.
#[derive(Debug)]
pub struct Player {
    listener: TcpListener,
}

impl Player {
    /// Binds a listener on 127.0.0.1 with a port chosen by the system.
    pub async fn bind() -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        Ok(Self { listener })
    }

    /// Returns the port that the client must connect to.
    pub fn port(&self) -> io::Result<u16> {
        Ok(self.listener.local_addr()?.port())
    }

    /// Plays `sequence` against the first client that connects, returning why it failed.
    pub async fn play(self, sequence: &Sequence) -> Result<(), String> {
        let (stream, _) = timeout(STEP_TIMEOUT, self.listener.accept())
            .await
            .map_err(|_| format!("no client connected within {STEP_TIMEOUT:?}"))?
            .map_err(|error| format!("accepting the client failed: {error}"))?;
        drop(self.listener);

        let connect = default_connect(sequence.version, sequence.clean_start);
        let mut connection = Connection {
            stream,
            pending_connect: (!sequence.connect).then(|| connect.clone()),
            disconnect_received: false,
        };

        if sequence.connect {
            connection.expect("CONNECT", &[connect]).await?;
        }
        // The CONNACK is the reply to a CONNECT. A sequence that does not read the CONNECT
        // sends its own first packet, to check that a client rejects anything but CONNACK.
        if sequence.connect && sequence.connack {
            connection
                .send("CONNACK", &default_connack(sequence.version))
                .await?;
        }
        for (index, step) in sequence.steps.iter().enumerate() {
            let label = format!("step {}", index + 1);
            match step {
                Step::Send(bytes) => connection.send(&label, bytes).await?,
                Step::Recv(bytes) => {
                    let forms = accepted_forms(sequence.version, bytes);
                    connection.expect(&label, &forms).await?;
                }
            }
        }

        if sequence.expect_disconnect {
            connection.check_closed(sequence.version).await
        } else {
            connection.check_still_answers(sequence.version).await
        }
    }
}

/// Returns the CONNECT that the client sends with the settings of the sequences.
pub fn default_connect(version: u8, clean_start: bool) -> Vec<u8> {
    let mut body = Vec::new();
    let protocol_name: &[u8] = if version == 3 { b"MQIsdp" } else { b"MQTT" };
    push_string(protocol_name, &mut body);
    body.push(version);
    body.push(if clean_start { 0x02 } else { 0x00 });
    body.extend_from_slice(&KEEP_ALIVE_SECS.to_be_bytes());
    if version == 5 {
        push_varint(3, &mut body);
        body.push(0x21);
        body.extend_from_slice(&RECEIVE_MAXIMUM.to_be_bytes());
    }
    push_string(CLIENT_ID.as_bytes(), &mut body);
    packet(0x10, &body)
}

/// Returns the CONNACK the broker sends: success, no session, and for v5 Receive
/// Maximum 20.
pub fn default_connack(version: u8) -> Vec<u8> {
    let mut body = vec![0x00, 0x00];
    if version == 5 {
        push_varint(3, &mut body);
        body.push(0x21);
        body.extend_from_slice(&RECEIVE_MAXIMUM.to_be_bytes());
    }
    packet(0x20, &body)
}

/// Returns the QoS 1 PUBLISH of the final check: packet id 65535, topic `alive check`,
/// payload `payload`.
pub fn alive_check_publish(version: u8) -> Vec<u8> {
    let mut body = Vec::new();
    push_string(b"alive check", &mut body);
    body.extend_from_slice(&ALIVE_CHECK_ID.to_be_bytes());
    if version == 5 {
        push_varint(0, &mut body);
    }
    body.extend_from_slice(b"payload");
    packet(0x32, &body)
}

/// Tells whether `packet` is a successful PUBACK of the final check's PUBLISH.
///
/// Before 5.0 the PUBACK is exactly `40 02 ff ff`. A 5.0 PUBACK may end after the
/// packet id or after the reason code, or carry properties. Only reason code 0x00
/// (success) counts, with no properties other than reason string and user property.
pub fn is_alive_check_puback(version: u8, packet: &[u8]) -> bool {
    let Some((0x40, body)) = split_packet(packet) else {
        return false;
    };
    let Some((id, rest)) = body.split_first_chunk::<2>() else {
        return false;
    };
    if u16::from_be_bytes(*id) != ALIVE_CHECK_ID {
        return false;
    }
    if version != 5 {
        return rest.is_empty();
    }

    match rest.split_first() {
        None => true,
        Some((0x00, properties)) => {
            properties.is_empty()
                || property_ids(properties).is_some_and(|ids| {
                    ids.iter()
                        .all(|id| *id == PROPERTY_REASON_STRING || *id == PROPERTY_USER)
                })
        }
        Some(_) => false,
    }
}

/// Returns the forms of an expected packet that the client may send.
///
/// A v5 PUBLISH with a Topic Alias is also accepted without that property. The
/// sequences show Topic Alias 65535 although the default CONNACK allows no alias, and
/// a client must not send a Topic Alias above the broker's Topic Alias Maximum
/// [MQTT-3.3.2-9].
pub fn accepted_forms(version: u8, expected: &[u8]) -> Vec<Vec<u8>> {
    let mut forms = vec![expected.to_vec()];
    if version == 5 {
        forms.extend(publish_without_topic_alias(expected));
    }
    forms
}

/// Reads the next packet from `stream` within [`STEP_TIMEOUT`], for tests that drive a
/// connection without a sequence.
pub async fn read_one_packet(stream: &mut TcpStream) -> Result<Vec<u8>, String> {
    let incoming = timeout(STEP_TIMEOUT, read_packet(stream))
        .await
        .map_err(|_| format!("nothing arrived within {STEP_TIMEOUT:?}"))??;
    match incoming {
        Incoming::Packet(bytes) => Ok(bytes),
        other => Err(other.describe()),
    }
}

/// One accepted client connection and what is still to be read from it.
struct Connection {
    stream: TcpStream,
    /// The default CONNECT that the client sent but the player has not read yet,
    /// when the sequence does not read it first.
    pending_connect: Option<Vec<u8>>,
    /// Whether a `recv` step has read a DISCONNECT, after which the client may send
    /// nothing more.
    disconnect_received: bool,
}

/// What the next read from the client returned.
enum Incoming {
    Packet(Vec<u8>),
    /// The client closed its side of the connection at a packet boundary.
    Eof,
    /// The connection was reset or aborted, which also means the client closed it.
    Reset(io::Error),
}

impl Incoming {
    fn describe(&self) -> String {
        match self {
            Self::Packet(bytes) => format!("received `{}`", to_hex(bytes)),
            Self::Eof => "the client closed the connection".to_owned(),
            Self::Reset(error) => format!("the connection was reset ({error})"),
        }
    }
}

impl Connection {
    async fn send(&mut self, label: &str, bytes: &[u8]) -> Result<(), String> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(|error| format!("{label}: sending `{}` failed: {error}", to_hex(bytes)))
    }

    /// Reads the next packet and fails unless it equals one of `forms`.
    async fn expect(&mut self, label: &str, forms: &[Vec<u8>]) -> Result<(), String> {
        let expected = forms.first().map(|bytes| to_hex(bytes)).unwrap_or_default();
        let incoming = self
            .next()
            .await
            .map_err(|error| format!("{label}: expected `{expected}`, but {error}"))?;
        match incoming {
            Incoming::Packet(bytes) if forms.contains(&bytes) => {
                self.disconnect_received |= bytes.first() == Some(&0xe0);
                Ok(())
            }
            Incoming::Packet(bytes) => {
                let note = forms
                    .iter()
                    .find_map(|form| equivalent_encoding(form, &bytes))
                    .map(|how| format!(" (the same packet encoded differently: {how})"))
                    .unwrap_or_default();
                Err(format!(
                    "{label}: expected `{expected}`, received `{}`{note}",
                    to_hex(&bytes)
                ))
            }
            other => Err(format!(
                "{label}: expected `{expected}`, {}",
                other.describe()
            )),
        }
    }

    /// Sends the alive check and fails unless the next packet is its PUBACK.
    async fn check_still_answers(&mut self, version: u8) -> Result<(), String> {
        let label = "final check (client still answers)";
        self.send(label, &alive_check_publish(version)).await?;

        let incoming = self
            .next()
            .await
            .map_err(|error| format!("{label}: no PUBACK for packet id 65535: {error}"))?;
        match incoming {
            Incoming::Packet(bytes) if is_alive_check_puback(version, &bytes) => Ok(()),
            other => Err(format!(
                "{label}: expected a PUBACK for packet id 65535, {}",
                other.describe()
            )),
        }
    }

    /// Sends the alive check and fails unless the client closes the connection, after
    /// at most one DISCONNECT, counting one read by a step, when it speaks 5.0.
    async fn check_closed(&mut self, version: u8) -> Result<(), String> {
        let label = "final check (client closed)";
        // The client may have closed already, so a failed write is not a failure.
        let _ = self.stream.write_all(&alive_check_publish(version)).await;

        let mut disconnect_seen = self.disconnect_received;
        loop {
            let incoming = self
                .next()
                .await
                .map_err(|error| format!("{label}: the connection is still open: {error}"))?;
            match incoming {
                Incoming::Eof | Incoming::Reset(_) => return Ok(()),
                Incoming::Packet(bytes)
                    if version == 5 && !disconnect_seen && bytes.first() == Some(&0xe0) =>
                {
                    disconnect_seen = true;
                }
                Incoming::Packet(bytes) if is_alive_check_puback(version, &bytes) => {
                    return Err(format!(
                        "{label}: the client answered the alive check with `{}` instead of \
                         closing the connection",
                        to_hex(&bytes)
                    ));
                }
                other @ Incoming::Packet(_) => {
                    return Err(format!(
                        "{label}: expected the connection closed, {}",
                        other.describe()
                    ))
                }
            }
        }
    }

    /// Reads the next packet, first skipping the default CONNECT that a sequence
    /// without a `connect` step leaves unread.
    async fn next(&mut self) -> Result<Incoming, String> {
        let incoming = self.next_raw().await?;
        let Some(connect) = self.pending_connect.take() else {
            return Ok(incoming);
        };

        match incoming {
            Incoming::Packet(bytes) if bytes == connect => self.next_raw().await,
            Incoming::Packet(bytes) if bytes.first() == Some(&0x10) => Err(format!(
                "the client sent CONNECT `{}`, expected `{}`",
                to_hex(&bytes),
                to_hex(&connect)
            )),
            other => Ok(other),
        }
    }

    async fn next_raw(&mut self) -> Result<Incoming, String> {
        match timeout(STEP_TIMEOUT, read_packet(&mut self.stream)).await {
            Ok(result) => result,
            Err(_) => Err(format!("nothing arrived within {STEP_TIMEOUT:?}")),
        }
    }
}

/// Reads one packet framed by its remaining length.
async fn read_packet(stream: &mut TcpStream) -> Result<Incoming, String> {
    let mut first = [0u8; 1];
    match stream.read(&mut first).await {
        Ok(0) => return Ok(Incoming::Eof),
        Ok(_) => {}
        Err(error) if is_reset(&error) => return Ok(Incoming::Reset(error)),
        Err(error) => return Err(format!("reading failed: {error}")),
    }

    let mut packet = vec![first[0]];
    let mut length: usize = 0;
    for shift in [0, 7, 14, 21] {
        let byte = read_byte(stream, &packet).await?;
        packet.push(byte);
        length |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return read_body(stream, packet, length).await;
        }
    }
    Err(format!(
        "the client sent a remaining length of more than four bytes: `{}`",
        to_hex(&packet)
    ))
}

async fn read_body(
    stream: &mut TcpStream,
    mut packet: Vec<u8>,
    length: usize,
) -> Result<Incoming, String> {
    if length > MAX_PACKET_BODY {
        return Err(format!(
            "the client announced a packet of {length} bytes: `{}`",
            to_hex(&packet)
        ));
    }
    let header_len = packet.len();
    packet.resize(header_len + length, 0);
    let body = packet.get_mut(header_len..).unwrap_or_default();
    match stream.read_exact(body).await {
        Ok(_) => Ok(Incoming::Packet(packet)),
        Err(error) => Err(format!(
            "the connection ended inside a packet with header `{}`: {error}",
            to_hex(packet.get(..header_len).unwrap_or_default())
        )),
    }
}

async fn read_byte(stream: &mut TcpStream, partial: &[u8]) -> Result<u8, String> {
    stream.read_u8().await.map_err(|error| {
        format!(
            "the connection ended inside a packet starting `{}`: {error}",
            to_hex(partial)
        )
    })
}

fn is_reset(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

fn packet(first_byte: u8, body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![first_byte];
    push_varint(body.len() as u64, &mut bytes);
    bytes.extend_from_slice(body);
    bytes
}

fn push_string(text: &[u8], out: &mut Vec<u8>) {
    let length = u16::try_from(text.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(text);
}

/// Splits a well-framed packet into its first byte and its body.
fn split_packet(packet: &[u8]) -> Option<(u8, &[u8])> {
    let (first, rest) = packet.split_first()?;
    let (length, body) = split_varint(rest)?;
    (body.len() == usize::try_from(length).ok()?).then_some((*first, body))
}

/// Splits a variable byte integer of at most four bytes off the front of `bytes`.
fn split_varint(bytes: &[u8]) -> Option<(u32, &[u8])> {
    let mut value = 0u32;
    for (index, byte) in bytes.iter().enumerate().take(4) {
        value |= u32::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            return Some((value, bytes.get(index + 1..)?));
        }
    }
    None
}

/// Returns the property ids of a property section (length included), or `None` when
/// the section is malformed.
fn property_ids(section: &[u8]) -> Option<Vec<u8>> {
    let (length, rest) = split_varint(section)?;
    if rest.len() != usize::try_from(length).ok()? {
        return None;
    }
    let entries = property_entries(rest)?;
    entries.iter().map(|entry| entry.first().copied()).collect()
}

/// Returns the length of the value of property `id` at the start of `value`.
fn property_value_len(id: u8, value: &[u8]) -> Option<usize> {
    let string_len = |bytes: &[u8]| -> Option<usize> {
        let length = bytes.first_chunk::<2>()?;
        Some(2 + usize::from(u16::from_be_bytes(*length)))
    };
    let len = match id {
        0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2a => 1,
        0x13 | 0x21 | 0x22 | 0x23 => 2,
        0x02 | 0x11 | 0x18 | 0x27 => 4,
        0x0b => value.len() - split_varint(value)?.1.len(),
        0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1a | 0x1c | 0x1f => string_len(value)?,
        0x26 => {
            let key = string_len(value)?;
            key + string_len(value.get(key..)?)?
        }
        _ => return None,
    };
    (len <= value.len()).then_some(len)
}

/// Returns a v5 PUBLISH without its Topic Alias property, or `None` when `publish`
/// is not a well-formed v5 PUBLISH with that property.
pub fn publish_without_topic_alias(publish: &[u8]) -> Option<Vec<u8>> {
    let parts = split_v5_publish(publish)?;
    let properties = property_entries(parts.properties)?;
    let kept: Vec<&[u8]> = properties
        .iter()
        .copied()
        .filter(|property| property.first() != Some(&PROPERTY_TOPIC_ALIAS))
        .collect();
    if kept.len() == properties.len() {
        return None;
    }

    let kept = kept.concat();
    let mut body = parts.head.to_vec();
    push_varint(kept.len() as u64, &mut body);
    body.extend_from_slice(&kept);
    body.extend_from_slice(parts.payload);
    Some(packet(parts.first, &body))
}

/// Names the way in which `received` is the packet `expected` in another encoding
/// that the specification also allows, for failure messages. Such a packet still
/// fails its step: the sequences fix the encoding.
fn equivalent_encoding(expected: &[u8], received: &[u8]) -> Option<&'static str> {
    // A DISCONNECT whose Remaining Length is below 2 has a Property Length of 0.
    if let ([0xe0, 0x01, code], [0xe0, 0x02, received_code, 0x00]) = (expected, received) {
        if code == received_code {
            return Some("DISCONNECT with an explicit zero property length");
        }
    }

    let expected_parts = split_v5_publish(expected)?;
    let received_parts = split_v5_publish(received)?;
    if expected_parts.first != received_parts.first
        || expected_parts.head != received_parts.head
        || expected_parts.payload != received_parts.payload
    {
        return None;
    }
    let mut expected_properties = property_entries(expected_parts.properties)?;
    let mut received_properties = property_entries(received_parts.properties)?;
    expected_properties.sort_unstable();
    received_properties.sort_unstable();
    (expected_properties == received_properties).then_some("PUBLISH properties in another order")
}

/// The parts of a v5 PUBLISH around its property list.
struct PublishParts<'a> {
    first: u8,
    /// Topic name and packet identifier.
    head: &'a [u8],
    /// The property list without its length.
    properties: &'a [u8],
    payload: &'a [u8],
}

fn split_v5_publish(publish: &[u8]) -> Option<PublishParts<'_>> {
    let (first, body) = split_packet(publish)?;
    if first & 0xf0 != 0x30 {
        return None;
    }
    let topic_len = usize::from(u16::from_be_bytes(*body.first_chunk::<2>()?));
    let id_len = if first & 0x06 == 0 { 0 } else { 2 };
    let (head, section) = body.split_at_checked(2 + topic_len + id_len)?;
    let (length, rest) = split_varint(section)?;
    let (properties, payload) = rest.split_at_checked(usize::try_from(length).ok()?)?;
    Some(PublishParts {
        first,
        head,
        properties,
        payload,
    })
}

/// Splits a property list (without its length) into one slice per property.
fn property_entries(properties: &[u8]) -> Option<Vec<&[u8]>> {
    let mut entries = Vec::new();
    let mut offset = 0;
    while offset < properties.len() {
        let id = *properties.get(offset)?;
        let end = offset + 1 + property_value_len(id, properties.get(offset + 1..)?)?;
        entries.push(properties.get(offset..end)?);
        offset = end;
    }
    Some(entries)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::notation::parse_payload;

    fn bytes(text: &str) -> Vec<u8> {
        parse_payload(text).unwrap()
    }

    fn sequence(version: u8, expect_disconnect: bool, steps: Vec<Step>) -> Sequence {
        Sequence {
            file: "RAW.json".to_owned(),
            group: "raw".to_owned(),
            name: "raw client".to_owned(),
            version,
            connect: true,
            connack: true,
            clean_start: true,
            command: None,
            expect_disconnect,
            steps,
        }
    }

    /// Plays `sequence` against `client`, a raw TCP peer scripted by the test.
    async fn play_against<F, Fut>(sequence: Sequence, client: F) -> Result<(), String>
    where
        F: FnOnce(TcpStream) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let player = Player::bind().await.unwrap();
        let port = player.port().unwrap();
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let client_task = tokio::spawn(client(stream));
        let result = player.play(&sequence).await;
        client_task.abort();
        result
    }

    async fn read_n(stream: &mut TcpStream, count: usize) -> Vec<u8> {
        let mut buffer = vec![0; count];
        stream.read_exact(&mut buffer).await.unwrap();
        buffer
    }

    #[test]
    fn default_connect_bytes() {
        assert_eq!(
            default_connect(4, true),
            bytes("10 r19 s4 'MQTT' 04 02 k60 s7 'fuzzish'")
        );
        assert_eq!(
            default_connect(3, false),
            bytes("10 r21 s6 'MQIsdp' 03 00 k60 s7 'fuzzish'")
        );
        assert_eq!(
            default_connect(5, true),
            bytes("10 r23 s4 'MQTT' 05 02 k60 v3 21 H20 s7 'fuzzish'")
        );
    }

    #[test]
    fn default_connack_bytes() {
        assert_eq!(default_connack(3), bytes("20 02 00 00"));
        assert_eq!(default_connack(4), bytes("20 02 00 00"));
        assert_eq!(default_connack(5), bytes("20 r6 00 00 v3 21 H20"));
    }

    #[test]
    fn alive_check_bytes() {
        assert_eq!(
            alive_check_publish(4),
            bytes("32 r22 s11 'alive check' m65535 'payload'")
        );
        assert_eq!(
            alive_check_publish(5),
            bytes("32 r23 s11 'alive check' m65535 v0 'payload'")
        );
    }

    #[test]
    fn alive_check_puback_forms() {
        let accepted = [
            (4, "40 02 ff ff"),
            (3, "40 02 ff ff"),
            (5, "40 02 ff ff"),
            (5, "40 03 ff ff 00"),
            (5, "40 04 ff ff 00 00"),
            (5, "40 r8 ff ff 00 v4 1F s1 'p'"),
            (5, "40 r11 ff ff 00 v7 26 s1 'k' s1 'v'"),
        ];
        for (version, text) in accepted {
            assert!(
                is_alive_check_puback(version, &bytes(text)),
                "v{version} {text}"
            );
        }

        let rejected = [
            (4, "40 03 ff ff 00"),
            (4, "40 02 ff fe"),
            (4, "50 02 ff ff"),
            (5, "40 03 ff ff 80"),
            (5, "40 03 ff ff 10"),
            (5, "40 r7 ff ff 00 v3 21 H5"),
            (5, "40 r6 ff ff 00 v4 1F"),
            (5, "40 05 ff ff 00 00"),
        ];
        for (version, text) in rejected {
            assert!(
                !is_alive_check_puback(version, &bytes(text)),
                "v{version} {text}"
            );
        }
    }

    #[test]
    fn topic_alias_form_accepted() {
        let with_alias = bytes(
            "32 r116 s12 'test/publish' m1 v92 01 i1 02 ffffffff 23 ffff 08 s14 'response/topic' \
             09 H36 '7deac5c5-8802-44ff-86ce-11479f337419' 03 s10 'text/plain' \
             26 s3 'key' s5 'value' 'message'",
        );
        let without_alias = bytes(
            "32 r113 s12 'test/publish' m1 v89 01 i1 02 ffffffff 08 s14 'response/topic' \
             09 H36 '7deac5c5-8802-44ff-86ce-11479f337419' 03 s10 'text/plain' \
             26 s3 'key' s5 'value' 'message'",
        );
        assert_eq!(
            accepted_forms(5, &with_alias),
            [with_alias.clone(), without_alias]
        );
        assert_eq!(accepted_forms(4, &with_alias), [with_alias]);

        let no_alias = bytes("32 r18 s5 'topic' m1 v0 'payload'");
        assert_eq!(accepted_forms(5, &no_alias), [no_alias]);
        let disconnect = bytes("E0 r1 81");
        assert_eq!(accepted_forms(5, &disconnect), [disconnect]);
    }

    #[test]
    fn equivalent_encodings_named() {
        assert_eq!(
            equivalent_encoding(&bytes("E0 01 81"), &bytes("E0 02 81 00")),
            Some("DISCONNECT with an explicit zero property length")
        );
        assert_eq!(
            equivalent_encoding(&bytes("E0 01 81"), &bytes("E0 02 82 00")),
            None
        );

        let expected = bytes("32 r13 s1 't' m1 v6 01 i1 03 s1 'p' 'x'");
        let reordered = bytes("32 r13 s1 't' m1 v6 03 s1 'p' 01 i1 'x'");
        assert_eq!(
            equivalent_encoding(&expected, &reordered),
            Some("PUBLISH properties in another order")
        );
        let other_payload = bytes("32 r13 s1 't' m1 v6 03 s1 'p' 01 i1 'y'");
        assert_eq!(equivalent_encoding(&expected, &other_payload), None);
        let other_value = bytes("32 r13 s1 't' m1 v6 03 s1 'q' 01 i1 'x'");
        assert_eq!(equivalent_encoding(&expected, &other_value), None);
    }

    #[tokio::test]
    async fn raw_client_passes_still_answers() {
        let steps = vec![Step::Send(bytes("D0 00"))];
        let result = play_against(sequence(4, false, steps), |mut stream| async move {
            stream.write_all(&default_connect(4, true)).await.unwrap();
            assert_eq!(read_n(&mut stream, 4).await, default_connack(4));
            assert_eq!(read_n(&mut stream, 2).await, bytes("D0 00"));
            assert_eq!(read_n(&mut stream, 24).await, alive_check_publish(4));
            stream.write_all(&bytes("40 02 ff ff")).await.unwrap();
            let _ = stream.read(&mut [0; 1]).await;
        })
        .await;
        assert_eq!(result, Ok(()));
    }

    #[tokio::test]
    async fn raw_client_passes_recv_then_close() {
        let steps = vec![Step::Send(bytes("F1 00")), Step::Recv(bytes("E0 r1 81"))];
        let result = play_against(sequence(5, true, steps), |mut stream| async move {
            stream.write_all(&default_connect(5, true)).await.unwrap();
            assert_eq!(read_n(&mut stream, 8).await, default_connack(5));
            assert_eq!(read_n(&mut stream, 2).await, bytes("F1 00"));
            stream.write_all(&bytes("E0 01 81")).await.unwrap();
        })
        .await;
        assert_eq!(result, Ok(()));
    }

    #[tokio::test]
    async fn v5_disconnect_before_close_accepted() {
        let steps = vec![Step::Send(bytes("F1 00"))];
        let result = play_against(sequence(5, true, steps), |mut stream| async move {
            stream.write_all(&default_connect(5, true)).await.unwrap();
            read_n(&mut stream, 10).await;
            stream.write_all(&bytes("E0 r2 81 00")).await.unwrap();
        })
        .await;
        assert_eq!(result, Ok(()));
    }

    #[tokio::test]
    async fn packet_after_disconnect_step_rejected() {
        let steps = vec![Step::Send(bytes("F1 00")), Step::Recv(bytes("E0 r1 81"))];
        let result = play_against(sequence(5, true, steps), |mut stream| async move {
            stream.write_all(&default_connect(5, true)).await.unwrap();
            read_n(&mut stream, 10).await;
            stream.write_all(&bytes("E0 01 81 E0 01 81")).await.unwrap();
        })
        .await;
        let error = result.unwrap_err();
        assert!(error.contains("received `e0 01 81`"), "{error}");
    }

    #[tokio::test]
    async fn v4_disconnect_before_close_rejected() {
        let result = play_against(sequence(4, true, vec![]), |mut stream| async move {
            stream.write_all(&default_connect(4, true)).await.unwrap();
            read_n(&mut stream, 4).await;
            stream.write_all(&bytes("E0 00")).await.unwrap();
        })
        .await;
        let error = result.unwrap_err();
        assert!(error.contains("received `e0 00`"), "{error}");
    }

    #[tokio::test]
    async fn wrong_connect_byte_detected() {
        let result = play_against(sequence(4, true, vec![]), |mut stream| async move {
            let mut connect = default_connect(4, true);
            connect[11] = 61;
            stream.write_all(&connect).await.unwrap();
            let _ = stream.read(&mut [0; 1]).await;
        })
        .await;
        let error = result.unwrap_err();
        assert!(error.starts_with("CONNECT: expected `10 13"), "{error}");
        assert!(error.contains("00 3d"), "{error}");
    }

    #[tokio::test]
    async fn answer_when_close_expected_fails() {
        let result = play_against(sequence(4, true, vec![]), |mut stream| async move {
            stream.write_all(&default_connect(4, true)).await.unwrap();
            read_n(&mut stream, 4 + 24).await;
            stream.write_all(&bytes("40 02 ff ff")).await.unwrap();
            let _ = stream.read(&mut [0; 1]).await;
        })
        .await;
        let error = result.unwrap_err();
        assert!(error.contains("answered the alive check"), "{error}");
    }

    #[tokio::test]
    async fn close_when_answer_expected_fails() {
        let result = play_against(sequence(4, false, vec![]), |mut stream| async move {
            stream.write_all(&default_connect(4, true)).await.unwrap();
            read_n(&mut stream, 4).await;
        })
        .await;
        let error = result.unwrap_err();
        assert!(
            error.contains("expected a PUBACK for packet id 65535"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn recv_mismatch_reported_with_bytes() {
        let steps = vec![
            Step::Send(bytes("32 r6 s1 't' m1234 'p'")),
            Step::Recv(bytes("40 r2 m1234")),
        ];
        let result = play_against(sequence(4, false, steps), |mut stream| async move {
            stream.write_all(&default_connect(4, true)).await.unwrap();
            read_n(&mut stream, 4 + 8).await;
            stream.write_all(&bytes("40 02 04 d3")).await.unwrap();
            let _ = stream.read(&mut [0; 1]).await;
        })
        .await;
        assert_eq!(
            result,
            Err("step 2: expected `40 02 04 d2`, received `40 02 04 d3`".to_owned())
        );
    }

    #[tokio::test]
    async fn unread_connect_skipped_without_connect_step() {
        let mut script = sequence(4, true, vec![Step::Send(bytes("30 r4 s1 't' 'p'"))]);
        script.connect = false;
        script.connack = false;
        let result = play_against(script, |mut stream| async move {
            stream.write_all(&default_connect(4, true)).await.unwrap();
            read_n(&mut stream, 6).await;
        })
        .await;
        assert_eq!(result, Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn silent_client_times_out() {
        let result = play_against(sequence(4, true, vec![]), |mut stream| async move {
            stream.write_all(&default_connect(4, true)).await.unwrap();
            let _ = stream.read(&mut [0; 64]).await;
            std::future::pending::<()>().await;
        })
        .await;
        let error = result.unwrap_err();
        assert!(error.contains("nothing arrived within 5s"), "{error}");
    }
}
