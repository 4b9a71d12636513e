//! Decode and encode speed of mqttlink's codec next to the `mqttbytes` codec of
//! rumqttc 0.25, on the same bytes. The cases are a QoS 1 PUBLISH with a 64-byte and a
//! 4 KiB payload in MQTT 3.1.1 and 5.0, and an MQTT 5.0 CONNECT with a will and many
//! properties.
//!
//! Both sides do the same work per iteration. A decode copies the packet's bytes into
//! a reused `BytesMut` and decodes one packet from it. An encode clears a reused
//! `BytesMut` and encodes one packet into it. Run with `cargo bench --bench codec`.
//! With `CODEC_BENCH_LOOP=operation/library/case/iterations` set, the binary runs that
//! one loop instead, so that callgrind can count its instructions.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use mqttlink::codec::{
    encode, ClientId, Connect, Decoder, Delivery, LastWill, Packet, PacketId, PayloadFormat,
    Properties, ProtocolVersion, Publish, QoS, DEFAULT_MAX_PACKET_SIZE,
};
use rumqttc::mqttbytes::v4 as rumqtt_v4;
use rumqttc::v5::mqttbytes::v5 as rumqtt_v5;

const TOPIC: &str = "sensors/device-0042/temperature";
const PACKET_ID: u16 = 42;
/// User properties on the CONNECT case, each a short name and value.
const USER_PROPERTIES: usize = 8;

/// One benchmark case: the same packet in both libraries' models, and its bytes.
struct Case {
    name: &'static str,
    version: ProtocolVersion,
    ours: Packet,
    theirs: Theirs,
    bytes: Bytes,
}

/// A rumqttc packet of either protocol version. The box only moves the larger v5
/// packet off the stack; encoding reads through it, decoding does not use this type.
enum Theirs {
    V4(rumqtt_v4::Packet),
    V5(Box<rumqtt_v5::Packet>),
}

impl Theirs {
    fn encode(&self, dst: &mut BytesMut) {
        match self {
            Self::V4(packet) => packet.write(dst, usize::MAX).map(drop).unwrap(),
            Self::V5(packet) => packet.write(dst, None).map(drop).unwrap(),
        }
    }
}

fn decode_theirs_v4(buf: &mut BytesMut) -> rumqtt_v4::Packet {
    rumqtt_v4::Packet::read(buf, usize::MAX).unwrap()
}

fn decode_theirs_v5(buf: &mut BytesMut) -> rumqtt_v5::Packet {
    rumqtt_v5::Packet::read(buf, None).unwrap()
}

fn payload(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

fn publish_case(name: &'static str, version: ProtocolVersion, payload_len: usize) -> Case {
    let payload = payload(payload_len);
    let ours = Packet::Publish(Publish {
        dup: false,
        delivery: Delivery::AtLeastOnce(PacketId::try_from(PACKET_ID).unwrap()),
        retain: false,
        topic: Some(TOPIC.parse().unwrap()),
        properties: Properties::default().into(),
        payload: payload.clone(),
    });
    let theirs = if version.is_v5() {
        let mut publish = rumqtt_v5::Publish::new(
            TOPIC,
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            payload,
            None,
        );
        publish.pkid = PACKET_ID;
        Theirs::V5(Box::new(rumqtt_v5::Packet::Publish(publish)))
    } else {
        let mut publish =
            rumqtt_v4::Publish::from_bytes(TOPIC, rumqttc::mqttbytes::QoS::AtLeastOnce, payload);
        publish.pkid = PACKET_ID;
        Theirs::V4(rumqtt_v4::Packet::Publish(publish))
    };
    Case::new(name, version, ours, theirs)
}

fn user_properties() -> Vec<(String, String)> {
    (0..USER_PROPERTIES)
        .map(|i| (format!("name-{i}"), format!("value-{i}")))
        .collect()
}

fn connect_case() -> Case {
    let user: Vec<(ByteString, ByteString)> = user_properties()
        .into_iter()
        .map(|(name, value)| (name.into(), value.into()))
        .collect();
    let ours = Packet::Connect(Box::new(Connect {
        protocol: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 30,
        client_id: "bench-client-0001".parse::<ClientId>().unwrap(),
        will: Some(LastWill {
            topic: "clients/bench-client-0001/status".parse().unwrap(),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties {
                will_delay_interval: Some(10),
                payload_format_indicator: Some(PayloadFormat::Utf8),
                message_expiry_interval: Some(3600),
                content_type: Some("text/plain".into()),
                response_topic: Some("clients/bench-client-0001/reply".parse().unwrap()),
                correlation_data: Some(Bytes::from_static(b"corr-0001")),
                user_properties: user.clone(),
                ..Properties::default()
            },
        }),
        username: Some("bench-user".into()),
        password: Some(Bytes::from_static(b"bench-password")),
        properties: Properties {
            session_expiry_interval: Some(7200),
            receive_maximum: Some(std::num::NonZeroU16::new(64).unwrap()),
            maximum_packet_size: Some(std::num::NonZeroU32::new(1 << 20).unwrap()),
            topic_alias_maximum: Some(16),
            request_response_information: Some(true),
            request_problem_information: Some(true),
            user_properties: user,
            authentication_method: Some("SCRAM-SHA-256".into()),
            authentication_data: Some(Bytes::from_static(b"n,,n=bench,r=0123456789")),
            ..Properties::default()
        },
    }));

    let theirs_connect = rumqtt_v5::Connect {
        keep_alive: 30,
        client_id: "bench-client-0001".into(),
        clean_start: true,
        properties: Some(rumqtt_v5::ConnectProperties {
            session_expiry_interval: Some(7200),
            receive_maximum: Some(64),
            max_packet_size: Some(1 << 20),
            topic_alias_max: Some(16),
            request_response_info: Some(1),
            request_problem_info: Some(1),
            user_properties: user_properties(),
            authentication_method: Some("SCRAM-SHA-256".into()),
            authentication_data: Some(Bytes::from_static(b"n,,n=bench,r=0123456789")),
        }),
    };
    let theirs_will = rumqtt_v5::LastWill {
        topic: Bytes::from_static(b"clients/bench-client-0001/status"),
        message: Bytes::from_static(b"offline"),
        qos: rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        retain: true,
        properties: Some(rumqtt_v5::LastWillProperties {
            delay_interval: Some(10),
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(3600),
            content_type: Some("text/plain".into()),
            response_topic: Some("clients/bench-client-0001/reply".into()),
            correlation_data: Some(Bytes::from_static(b"corr-0001")),
            user_properties: user_properties(),
        }),
    };
    let login = rumqtt_v5::Login::new("bench-user", "bench-password");
    let theirs = Theirs::V5(Box::new(rumqtt_v5::Packet::Connect(
        theirs_connect,
        Some(theirs_will),
        Some(login),
    )));
    Case::new("connect_v5", ProtocolVersion::V5, ours, theirs)
}

impl Case {
    /// Builds a case and checks that both encoders write the same number of bytes and
    /// that both decoders accept mqttlink's encoding, which is the one benchmarked.
    fn new(name: &'static str, version: ProtocolVersion, ours: Packet, theirs: Theirs) -> Self {
        let mut bytes = BytesMut::new();
        encode(&ours, version, DEFAULT_MAX_PACKET_SIZE, &mut bytes).unwrap();
        let mut their_bytes = BytesMut::new();
        theirs.encode(&mut their_bytes);
        assert_eq!(
            bytes.len(),
            their_bytes.len(),
            "{name}: the two encodings differ in length"
        );

        let case = Self {
            name,
            version,
            ours,
            theirs,
            bytes: bytes.freeze(),
        };
        let mut buf = BytesMut::from(case.bytes.as_ref());
        let input = address_range(&buf);
        let decoded = case.decode_ours(&mut buf);
        assert_eq!(decoded, case.ours, "{name}: mqttlink decode");
        if let Packet::Publish(publish) = &decoded {
            assert_shares(&input, &publish.payload, name, "mqttlink");
        }

        let mut buf = BytesMut::from(case.bytes.as_ref());
        let input = address_range(&buf);
        let payload = if version.is_v5() {
            match decode_theirs_v5(&mut buf) {
                rumqtt_v5::Packet::Publish(publish) => Some(publish.payload),
                _ => None,
            }
        } else {
            match decode_theirs_v4(&mut buf) {
                rumqtt_v4::Packet::Publish(publish) => Some(publish.payload),
                _ => None,
            }
        };
        if let Some(payload) = payload {
            assert_shares(&input, &payload, name, "rumqttc");
        }
        case
    }

    fn decode_ours(&self, buf: &mut BytesMut) -> Packet {
        // A server decoder takes one CONNECT per connection, so the CONNECT case needs a
        // new decoder per packet. The client decoder is reused, as on a connection.
        let mut decoder = match self.ours {
            Packet::Connect(_) => Decoder::for_server(),
            _ => Decoder::for_client(self.version),
        };
        decoder.decode(buf).unwrap().unwrap()
    }
}

fn address_range(bytes: &[u8]) -> std::ops::Range<usize> {
    let start = bytes.as_ptr() as usize;
    start..start + bytes.len()
}

/// Checks that a decoded payload points into the input buffer, so it was not copied.
fn assert_shares(input: &std::ops::Range<usize>, payload: &[u8], case: &str, library: &str) {
    let payload = address_range(payload);
    assert!(
        input.start <= payload.start && payload.end <= input.end,
        "{case}: {library} copied the payload on decode"
    );
}

fn cases() -> Vec<Case> {
    vec![
        publish_case("publish_64_v3.1.1", ProtocolVersion::V3_1_1, 64),
        publish_case("publish_4k_v3.1.1", ProtocolVersion::V3_1_1, 4096),
        publish_case("publish_64_v5", ProtocolVersion::V5, 64),
        publish_case("publish_4k_v5", ProtocolVersion::V5, 4096),
        connect_case(),
    ]
}

/// One decode with mqttlink: refill `buf` with the case's bytes, decode a packet and
/// drop it. `decoder` is `None` for the CONNECT case, which needs a new server
/// decoder.
#[inline]
fn decode_mqttlink(case: &Case, decoder: Option<&mut Decoder>, buf: &mut BytesMut) {
    buf.extend_from_slice(&case.bytes);
    let packet = match decoder {
        Some(decoder) => decoder.decode(buf),
        None => Decoder::for_server().decode(buf),
    };
    black_box(packet.unwrap().unwrap());
}

/// One decode with rumqttc, the same way.
#[inline]
fn decode_rumqttc(case: &Case, buf: &mut BytesMut) {
    buf.extend_from_slice(&case.bytes);
    if case.version.is_v5() {
        black_box(decode_theirs_v5(buf));
    } else {
        black_box(decode_theirs_v4(buf));
    }
}

#[inline]
fn encode_mqttlink(case: &Case, buf: &mut BytesMut) -> usize {
    buf.clear();
    encode(
        black_box(&case.ours),
        case.version,
        DEFAULT_MAX_PACKET_SIZE,
        buf,
    )
    .unwrap();
    buf.len()
}

#[inline]
fn encode_rumqttc(case: &Case, buf: &mut BytesMut) -> usize {
    buf.clear();
    black_box(&case.theirs).encode(buf);
    buf.len()
}

/// Returns the decoder reused across iterations: a client decoder, or `None` for the
/// CONNECT case, which needs a new server decoder per packet.
fn reused_decoder(case: &Case) -> Option<Decoder> {
    match case.ours {
        Packet::Connect(_) => None,
        _ => Some(Decoder::for_client(case.version)),
    }
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for case in cases() {
        group.throughput(Throughput::Bytes(case.bytes.len() as u64));
        let mut buf = BytesMut::with_capacity(case.bytes.len());

        group.bench_function(BenchmarkId::new("mqttlink", case.name), |b| {
            let mut decoder = reused_decoder(&case);
            b.iter(|| decode_mqttlink(&case, decoder.as_mut(), &mut buf));
        });

        group.bench_function(BenchmarkId::new("rumqttc", case.name), |b| {
            b.iter(|| decode_rumqttc(&case, &mut buf));
        });
    }
    group.finish();
}

fn encode_packets(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    for case in cases() {
        group.throughput(Throughput::Bytes(case.bytes.len() as u64));
        let mut buf = BytesMut::with_capacity(case.bytes.len());

        group.bench_function(BenchmarkId::new("mqttlink", case.name), |b| {
            b.iter(|| black_box(encode_mqttlink(&case, &mut buf)));
        });

        group.bench_function(BenchmarkId::new("rumqttc", case.name), |b| {
            b.iter(|| black_box(encode_rumqttc(&case, &mut buf)));
        });
    }
    group.finish();
}

/// Runs one benchmark's iteration `iterations` times without criterion, for counting
/// instructions with callgrind: `spec` is `operation/library/case/iterations`, for
/// example `decode/mqttlink/publish_64_v5/6000`.
fn run_loop(spec: &str) {
    let parts: Vec<&str> = spec.split('/').collect();
    let [operation, library, name, iterations] = parts[..] else {
        panic!("CODEC_BENCH_LOOP {spec:?}: expected operation/library/case/iterations");
    };
    let iterations: usize = iterations
        .parse()
        .unwrap_or_else(|_| panic!("CODEC_BENCH_LOOP {spec:?}: invalid iteration count"));
    let case = cases()
        .into_iter()
        .find(|case| case.name == name)
        .unwrap_or_else(|| panic!("CODEC_BENCH_LOOP {spec:?}: unknown case {name:?}"));
    let mut buf = BytesMut::with_capacity(case.bytes.len());
    let mut decoder = reused_decoder(&case);
    for _ in 0..iterations {
        match (operation, library) {
            ("decode", "mqttlink") => decode_mqttlink(&case, decoder.as_mut(), &mut buf),
            ("decode", "rumqttc") => decode_rumqttc(&case, &mut buf),
            ("encode", "mqttlink") => {
                black_box(encode_mqttlink(&case, &mut buf));
            }
            ("encode", "rumqttc") => {
                black_box(encode_rumqttc(&case, &mut buf));
            }
            _ => panic!("CODEC_BENCH_LOOP {spec:?}: unknown operation or library"),
        }
    }
}

criterion_group!(benches, decode, encode_packets);

fn main() {
    // With CODEC_BENCH_LOOP set, run one loop for callgrind instead of criterion.
    if let Ok(spec) = std::env::var("CODEC_BENCH_LOOP") {
        run_loop(&spec);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
