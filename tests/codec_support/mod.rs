//! Helpers shared by the codec test suites: short constructors for validated values,
//! whole-buffer decoding, and one valid packet of every kind per protocol version.
//!
//! Each test crate includes this module and uses only part of it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use mqttlink::codec::{
    encode, AuthReason, ClientId, ConnAck, Connect, ConnectReason, DecodeError, Decoder, Delivery,
    Disconnect, DisconnectReason, LastWill, Packet, PacketId, PayloadFormat, Properties,
    ProtocolVersion, PubAck, PubAckReason, PubComp, PubCompReason, PubRec, PubRel, Publish, QoS,
    SubAck, SubAckReason, Subscribe, SubscriptionOptions, TopicFilter, TopicName, UnsubAck,
    UnsubAckReason, Unsubscribe, DEFAULT_MAX_PACKET_SIZE,
};

/// Every protocol version the codec supports.
pub const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V3_1,
    ProtocolVersion::V3_1_1,
    ProtocolVersion::V5,
];

/// Which side of the connection decodes a byte sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receiver {
    /// `Decoder::for_client`: packets a server sends.
    Client,
    /// `Decoder::for_server`: packets a client sends.
    Server,
}

pub fn topic(name: &str) -> TopicName {
    name.parse().unwrap()
}

pub fn filter(text: &str) -> TopicFilter {
    text.parse().unwrap()
}

pub fn pid(value: u16) -> PacketId {
    PacketId::try_from(value).unwrap()
}

pub fn client_id(text: &str) -> ClientId {
    text.parse().unwrap()
}

pub fn string(text: &'static str) -> ByteString {
    ByteString::from_static(text)
}

pub fn nz16(value: u16) -> NonZeroU16 {
    NonZeroU16::new(value).unwrap()
}

pub fn nz32(value: u32) -> NonZeroU32 {
    NonZeroU32::new(value).unwrap()
}

/// Returns a decoder for `receiver` that decodes packets of `version`. A server
/// decoder first decodes a minimal CONNECT of that version, as on a real connection.
pub fn decoder(receiver: Receiver, version: ProtocolVersion) -> Decoder {
    match receiver {
        Receiver::Client => Decoder::for_client(version),
        Receiver::Server => {
            let mut decoder = Decoder::for_server();
            let mut buf = BytesMut::from(minimal_connect(version));
            let connect = decoder.decode(&mut buf).unwrap();
            assert!(
                matches!(connect, Some(Packet::Connect(_))),
                "CONNECT not decoded"
            );
            decoder
        }
    }
}

/// Returns the bytes of a CONNECT of `version` with client identifier "abc".
pub fn minimal_connect(version: ProtocolVersion) -> &'static [u8] {
    match version {
        ProtocolVersion::V3_1 => &[
            0x10, 0x11, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x02, 0x00, 0x3C,
            0x00, 0x03, b'a', b'b', b'c',
        ],
        ProtocolVersion::V3_1_1 => &[
            0x10, 0x0F, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x03,
            b'a', b'b', b'c',
        ],
        ProtocolVersion::V5 => &[
            0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C, 0x00, 0x00,
            0x03, b'a', b'b', b'c',
        ],
    }
}

/// Decodes every whole packet in `bytes` and returns them with the bytes left over.
pub fn decode_all(
    decoder: &mut Decoder,
    bytes: &[u8],
) -> Result<(Vec<Packet>, usize), DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let mut packets = Vec::new();
    while let Some(packet) = decoder.decode(&mut buf)? {
        packets.push(packet);
    }
    Ok((packets, buf.len()))
}

/// Encodes `packet` with the default maximum packet size.
pub fn encode_to_vec(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut dst = BytesMut::new();
    encode(packet, version, DEFAULT_MAX_PACKET_SIZE, &mut dst).unwrap();
    dst.to_vec()
}

/// Returns one valid packet of every kind `receiver` may decode under `version`, with
/// properties set where the version has them. Fuzzing mutates their encodings.
pub fn sample_packets(version: ProtocolVersion, receiver: Receiver) -> Vec<Packet> {
    let mut packets = sample_publish_flow(version);
    match receiver {
        Receiver::Client => packets.extend(sample_server_packets(version)),
        Receiver::Server => packets.extend(sample_client_packets(version)),
    }
    packets
}

/// Returns `properties` in MQTT 5.0 and no properties in earlier versions.
fn only_in_v5(version: ProtocolVersion, properties: Properties) -> Properties {
    if version.is_v5() {
        properties
    } else {
        Properties::default()
    }
}

fn reason_string_properties(version: ProtocolVersion) -> Properties {
    only_in_v5(
        version,
        Properties {
            reason_string: Some(string("why")),
            user_properties: vec![(string("k"), string("v"))],
            ..Properties::default()
        },
    )
}

/// PUBLISH and its acknowledgements, which travel in both directions.
fn sample_publish_flow(version: ProtocolVersion) -> Vec<Packet> {
    let v5 = version.is_v5();
    vec![
        Packet::Publish(Publish {
            dup: false,
            delivery: Delivery::AtLeastOnce(pid(7)),
            retain: true,
            topic: Some(topic("sensors/1/temp")),
            properties: only_in_v5(
                version,
                Properties {
                    payload_format_indicator: Some(PayloadFormat::Utf8),
                    message_expiry_interval: Some(60),
                    content_type: Some(string("text/plain")),
                    response_topic: Some(topic("replies/1")),
                    correlation_data: Some(Bytes::from_static(b"\x01\x02")),
                    topic_alias: Some(nz16(3)),
                    ..Properties::default()
                },
            )
            .into(),
            payload: Bytes::from_static(b"21.5"),
        }),
        Packet::PubAck(PubAck {
            packet_id: pid(7),
            reason: if v5 {
                PubAckReason::NoMatchingSubscribers
            } else {
                PubAckReason::Success
            },
            properties: reason_string_properties(version).into(),
        }),
        Packet::PubRec(PubRec {
            packet_id: pid(8),
            reason: PubAckReason::Success,
            properties: reason_string_properties(version).into(),
        }),
        Packet::PubRel(PubRel {
            packet_id: pid(8),
            reason: PubCompReason::Success,
            properties: Properties::default().into(),
        }),
        Packet::PubComp(PubComp {
            packet_id: pid(8),
            reason: if v5 {
                PubCompReason::PacketIdentifierNotFound
            } else {
                PubCompReason::Success
            },
            properties: reason_string_properties(version).into(),
        }),
    ]
}

fn sample_server_packets(version: ProtocolVersion) -> Vec<Packet> {
    let mut packets = vec![
        Packet::ConnAck(ConnAck {
            session_present: true,
            reason: ConnectReason::Success,
            properties: only_in_v5(
                version,
                Properties {
                    receive_maximum: Some(nz16(10)),
                    maximum_qos: Some(QoS::AtLeastOnce),
                    assigned_client_identifier: Some(string("auto-1")),
                    ..Properties::default()
                },
            )
            .into(),
        }),
        Packet::SubAck(SubAck {
            packet_id: pid(9),
            reasons: vec![SubAckReason::GrantedQoS1, SubAckReason::UnspecifiedError],
            properties: reason_string_properties(version).into(),
        }),
        Packet::UnsubAck(UnsubAck {
            packet_id: pid(10),
            reasons: if version.is_v5() {
                vec![UnsubAckReason::Success]
            } else {
                Vec::new()
            },
            properties: reason_string_properties(version).into(),
        }),
        Packet::PingResp,
    ];
    if version.is_v5() {
        packets.push(Packet::Disconnect(Disconnect {
            reason: DisconnectReason::ServerShuttingDown,
            properties: reason_string_properties(version).into(),
        }));
        packets.push(auth_continue());
    }
    packets
}

fn sample_client_packets(version: ProtocolVersion) -> Vec<Packet> {
    let mut packets = vec![
        Packet::Subscribe(Subscribe {
            packet_id: pid(9),
            filters: vec![
                (
                    filter("sensors/+/temp"),
                    SubscriptionOptions::with_qos(QoS::AtLeastOnce),
                ),
                (
                    filter("alerts/#"),
                    SubscriptionOptions::with_qos(QoS::ExactlyOnce),
                ),
            ],
            properties: only_in_v5(
                version,
                Properties {
                    subscription_identifiers: vec![nz32(5)],
                    ..Properties::default()
                },
            )
            .into(),
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(10),
            filters: vec![filter("sensors/+/temp")],
            properties: Properties::default().into(),
        }),
        Packet::PingReq,
        Packet::Disconnect(Disconnect {
            reason: DisconnectReason::NormalDisconnection,
            properties: Properties::default().into(),
        }),
    ];
    if version.is_v5() {
        packets.push(auth_continue());
    }
    packets
}

/// Returns a valid CONNECT of `version` with a will, user name and password.
pub fn sample_connect(version: ProtocolVersion) -> Packet {
    let v5 = version.is_v5();
    Packet::Connect(Box::new(Connect {
        protocol: version,
        clean_start: true,
        keep_alive: 30,
        client_id: client_id("sample-client"),
        will: Some(LastWill {
            topic: topic("clients/sample/status"),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: if v5 {
                Properties {
                    will_delay_interval: Some(5),
                    ..Properties::default()
                }
            } else {
                Properties::default()
            },
        }),
        username: Some(string("user")),
        password: Some(Bytes::from_static(b"secret")),
        properties: if v5 {
            Properties {
                session_expiry_interval: Some(3600),
                receive_maximum: Some(nz16(32)),
                ..Properties::default()
            }
        } else {
            Properties::default()
        },
    }))
}

fn auth_continue() -> Packet {
    Packet::Auth(mqttlink::codec::Auth {
        reason: AuthReason::ContinueAuthentication,
        properties: Properties {
            authentication_method: Some(string("SCRAM-SHA-1")),
            authentication_data: Some(Bytes::from_static(b"client-first")),
            ..Properties::default()
        }
        .into(),
    })
}
