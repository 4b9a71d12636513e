//! Byte vectors written from the MQTT 3.1, 3.1.1 and 5.0 specifications, checked in
//! both directions: decoding the bytes gives the packet, and encoding the packet gives
//! the bytes. Invalid rows check the violation and its MQTT 5 reason code. The streaming tests
//! check partial input, several packets per buffer and that payloads are not copied.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::too_many_lines,
    clippy::similar_names
)]

mod codec_support;

use bytes::{Bytes, BytesMut};
use mqttlink::codec::{
    encode, encoded_len, Auth, AuthReason, ConnAck, Connect, ConnectReason, DecodeError, Decoder,
    Delivery, Disconnect, DisconnectReason, LastWill, Packet, PayloadFormat, Properties,
    ProtocolVersion, PubAck, PubAckReason, PubComp, PubCompReason, PubRec, PubRel, Publish, QoS,
    RetainHandling, SubAck, SubAckReason, Subscribe, SubscriptionOptions, TopicName, UnsubAck,
    UnsubAckReason, Unsubscribe, Violation, DEFAULT_MAX_PACKET_SIZE,
};

use codec_support::{
    client_id, decode_all, decoder, filter, nz16, nz32, pid, string, topic, Receiver,
};

const V3_1: ProtocolVersion = ProtocolVersion::V3_1;
const V3_1_1: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

/// A byte sequence that is a valid packet.
struct Valid {
    name: &'static str,
    version: ProtocolVersion,
    receiver: Receiver,
    bytes: &'static [u8],
    packet: Packet,
    /// `false` when the bytes are a valid but longer form than the encoder writes,
    /// such as a v5 PUBACK that spells out the Success reason code.
    canonical: bool,
}

/// A byte sequence that the decoder must reject with a violation of `kind`, reported
/// with `reason`.
struct Invalid {
    name: &'static str,
    version: ProtocolVersion,
    receiver: Receiver,
    bytes: &'static [u8],
    kind: Kind,
    reason: DisconnectReason,
}

/// The expected `Violation` variant, by name and by a check on the error.
struct Kind {
    name: &'static str,
    matches: fn(&DecodeError) -> bool,
}

/// Builds the `Kind` of one `Violation` variant, whatever its fields.
macro_rules! kind {
    ($variant:ident) => {
        Kind {
            name: stringify!($variant),
            matches: |error| matches!(error, DecodeError::Violation(Violation::$variant { .. })),
        }
    };
}

fn valid(
    name: &'static str,
    version: ProtocolVersion,
    receiver: Receiver,
    bytes: &'static [u8],
    packet: Packet,
) -> Valid {
    Valid {
        name,
        version,
        receiver,
        bytes,
        packet,
        canonical: true,
    }
}

fn decode_only(
    name: &'static str,
    version: ProtocolVersion,
    receiver: Receiver,
    bytes: &'static [u8],
    packet: Packet,
) -> Valid {
    Valid {
        name,
        version,
        receiver,
        bytes,
        packet,
        canonical: false,
    }
}

fn invalid(
    name: &'static str,
    version: ProtocolVersion,
    receiver: Receiver,
    bytes: &'static [u8],
    kind: Kind,
    reason: DisconnectReason,
) -> Invalid {
    Invalid {
        name,
        version,
        receiver,
        bytes,
        kind,
        reason,
    }
}

/// Returns a PUBLISH without the DUP and RETAIN flags.
fn publish(
    delivery: Delivery,
    topic: Option<TopicName>,
    properties: Properties,
    payload: Bytes,
) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        delivery,
        retain: false,
        topic,
        properties: properties.into(),
        payload,
    })
}

fn no_props() -> Properties {
    Properties::default()
}

fn user_kv() -> Vec<(bytestring::ByteString, bytestring::ByteString)> {
    vec![(string("k"), string("v"))]
}

fn connect_rows() -> Vec<Valid> {
    use Receiver::Server;

    let minimal = |protocol| {
        Packet::Connect(Box::new(Connect {
            protocol,
            clean_start: true,
            keep_alive: 60,
            client_id: client_id("abc"),
            will: None,
            username: None,
            password: None,
            properties: no_props(),
        }))
    };

    vec![
        valid(
            "3.1 CONNECT with protocol name MQIsdp and level 3",
            V3_1,
            Server,
            &[
                0x10, 0x11, // CONNECT, remaining length 17
                0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, // name, level
                0x02, 0x00, 0x3C, // clean session, keep-alive 60
                0x00, 0x03, b'a', b'b', b'c', // client identifier
            ],
            minimal(V3_1),
        ),
        valid(
            "3.1.1 CONNECT minimal",
            V3_1_1,
            Server,
            &[
                0x10, 0x0F, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x03,
                b'a', b'b', b'c',
            ],
            minimal(V3_1_1),
        ),
        valid(
            "3.1.1 CONNECT with will, user name and password",
            V3_1_1,
            Server,
            &[
                0x10, 0x20, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04,
                // user name, password, will retain, will QoS 1, will, clean session
                0xEE, 0x00, 0x0A, // keep-alive 10
                0x00, 0x03, b'a', b'b', b'c', // client identifier
                0x00, 0x03, b'w', b'/', b't', // will topic
                0x00, 0x03, b'b', b'y', b'e', // will payload
                0x00, 0x01, b'u', // user name
                0x00, 0x02, b'p', b'w', // password
            ],
            Packet::Connect(Box::new(Connect {
                protocol: V3_1_1,
                clean_start: true,
                keep_alive: 10,
                client_id: client_id("abc"),
                will: Some(LastWill {
                    topic: topic("w/t"),
                    payload: Bytes::from_static(b"bye"),
                    qos: QoS::AtLeastOnce,
                    retain: true,
                    properties: no_props(),
                }),
                username: Some(string("u")),
                password: Some(Bytes::from_static(b"pw")),
                properties: no_props(),
            })),
        ),
        valid(
            "3.1.1 CONNECT with empty client identifier",
            V3_1_1,
            Server,
            &[
                0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x00, 0x00, 0x00,
            ],
            Packet::Connect(Box::new(Connect {
                protocol: V3_1_1,
                clean_start: true,
                keep_alive: 0,
                client_id: client_id(""),
                will: None,
                username: None,
                password: None,
                properties: no_props(),
            })),
        ),
        valid(
            "5.0 CONNECT with every CONNECT and will property",
            V5,
            Server,
            &[
                0x10, 0x60, // remaining length 96
                0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, //
                0x86, 0x00, 0x1E, // user name, will QoS 0, will, clean start; keep-alive 30
                0x24, // property length 36
                0x11, 0x00, 0x00, 0x00, 0x78, // session expiry interval 120
                0x15, 0x00, 0x01, b'm', // authentication method
                0x16, 0x00, 0x02, 0x01, 0x02, // authentication data
                0x17, 0x00, // request problem information 0
                0x19, 0x01, // request response information 1
                0x21, 0x00, 0x14, // receive maximum 20
                0x22, 0x00, 0x0A, // topic alias maximum 10
                0x27, 0x00, 0x00, 0x10, 0x00, // maximum packet size 4096
                0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // user property
                0x00, 0x03, b'a', b'b', b'c', // client identifier
                0x22, // will property length 34
                0x01, 0x01, // payload format indicator UTF-8
                0x02, 0x00, 0x00, 0x00, 0x3C, // message expiry interval 60
                0x08, 0x00, 0x01, b'r', // response topic
                0x09, 0x00, 0x01, 0x2A, // correlation data
                0x03, 0x00, 0x04, b't', b'e', b'x', b't', // content type
                0x18, 0x00, 0x00, 0x00, 0x05, // will delay interval 5
                0x26, 0x00, 0x01, b'a', 0x00, 0x01, b'b', // user property
                0x00, 0x01, b'w', // will topic
                0x00, 0x01, b'x', // will payload
                0x00, 0x01, b'u', // user name
            ],
            Packet::Connect(Box::new(Connect {
                protocol: V5,
                clean_start: true,
                keep_alive: 30,
                client_id: client_id("abc"),
                will: Some(LastWill {
                    topic: topic("w"),
                    payload: Bytes::from_static(b"x"),
                    qos: QoS::AtMostOnce,
                    retain: false,
                    properties: Properties {
                        payload_format_indicator: Some(PayloadFormat::Utf8),
                        message_expiry_interval: Some(60),
                        content_type: Some(string("text")),
                        response_topic: Some(topic("r")),
                        correlation_data: Some(Bytes::from_static(&[0x2A])),
                        will_delay_interval: Some(5),
                        user_properties: vec![(string("a"), string("b"))],
                        ..no_props()
                    },
                }),
                username: Some(string("u")),
                password: None,
                properties: Properties {
                    session_expiry_interval: Some(120),
                    authentication_method: Some(string("m")),
                    authentication_data: Some(Bytes::from_static(&[0x01, 0x02])),
                    request_problem_information: Some(false),
                    request_response_information: Some(true),
                    receive_maximum: Some(nz16(20)),
                    topic_alias_maximum: Some(10),
                    user_properties: user_kv(),
                    maximum_packet_size: Some(nz32(4096)),
                    ..no_props()
                },
            })),
        ),
        valid(
            "5.0 CONNECT with password and no user name",
            V5,
            Server,
            &[
                0x10, 0x11, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x40, 0x00, 0x00, 0x00, 0x00,
                0x00, // empty client identifier
                0x00, 0x02, b'p', b'w',
            ],
            Packet::Connect(Box::new(Connect {
                protocol: V5,
                clean_start: false,
                keep_alive: 0,
                client_id: client_id(""),
                will: None,
                username: None,
                password: Some(Bytes::from_static(b"pw")),
                properties: no_props(),
            })),
        ),
    ]
}

#[rustfmt::skip] // One row per line reads as a table.
fn connack_rows() -> Vec<Valid> {
    use Receiver::Client;

    let connack = |session_present, reason| {
        Packet::ConnAck(ConnAck {
            session_present,
            reason,
            properties: no_props().into(),
        })
    };

    vec![
        valid("3.1.1 CONNACK accepted", V3_1_1, Client, &[0x20, 0x02, 0x00, 0x00], connack(false, ConnectReason::Success)),
        valid("3.1.1 CONNACK session present", V3_1_1, Client, &[0x20, 0x02, 0x01, 0x00], connack(true, ConnectReason::Success)),
        valid("3.1.1 CONNACK return code 1", V3_1_1, Client, &[0x20, 0x02, 0x00, 0x01], connack(false, ConnectReason::UnsupportedProtocolVersion)),
        valid("3.1.1 CONNACK return code 2", V3_1_1, Client, &[0x20, 0x02, 0x00, 0x02], connack(false, ConnectReason::ClientIdentifierNotValid)),
        valid("3.1.1 CONNACK return code 3", V3_1_1, Client, &[0x20, 0x02, 0x00, 0x03], connack(false, ConnectReason::ServerUnavailable)),
        valid("3.1.1 CONNACK return code 4", V3_1_1, Client, &[0x20, 0x02, 0x00, 0x04], connack(false, ConnectReason::BadUserNameOrPassword)),
        valid("3.1.1 CONNACK return code 5", V3_1_1, Client, &[0x20, 0x02, 0x00, 0x05], connack(false, ConnectReason::NotAuthorized)),
        valid("5.0 CONNACK success without properties", V5, Client, &[0x20, 0x03, 0x00, 0x00, 0x00], connack(false, ConnectReason::Success)),
        valid("5.0 CONNACK not authorized", V5, Client, &[0x20, 0x03, 0x00, 0x87, 0x00], connack(false, ConnectReason::NotAuthorized)),
        valid(
            "5.0 CONNACK with every CONNACK property",
            V5,
            Client,
            &[
                0x20, 0x41, 0x01, 0x00, // remaining length 65, session present, success
                0x3E, // property length 62
                0x11, 0x00, 0x00, 0x00, 0x3C, // session expiry interval 60
                0x12, 0x00, 0x02, b'i', b'd', // assigned client identifier
                0x13, 0x00, 0x1E, // server keep alive 30
                0x15, 0x00, 0x01, b'm', // authentication method
                0x16, 0x00, 0x01, 0x07, // authentication data
                0x1A, 0x00, 0x01, b'r', // response information
                0x1C, 0x00, 0x01, b's', // server reference
                0x1F, 0x00, 0x02, b'o', b'k', // reason string
                0x21, 0x00, 0x0A, // receive maximum 10
                0x22, 0x00, 0x05, // topic alias maximum 5
                0x24, 0x01, // maximum QoS 1
                0x25, 0x00, // retain not available
                0x27, 0x00, 0x00, 0x04, 0x00, // maximum packet size 1024
                0x28, 0x01, // wildcard subscriptions available
                0x29, 0x00, // subscription identifiers not available
                0x2A, 0x01, // shared subscriptions available
                0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // user property
            ],
            Packet::ConnAck(ConnAck {
                session_present: true,
                reason: ConnectReason::Success,
                properties: Properties {
                    session_expiry_interval: Some(60),
                    assigned_client_identifier: Some(string("id")),
                    server_keep_alive: Some(30),
                    authentication_method: Some(string("m")),
                    authentication_data: Some(Bytes::from_static(&[0x07])),
                    response_information: Some(string("r")),
                    server_reference: Some(string("s")),
                    reason_string: Some(string("ok")),
                    receive_maximum: Some(nz16(10)),
                    topic_alias_maximum: Some(5),
                    maximum_qos: Some(QoS::AtLeastOnce),
                    retain_available: Some(false),
                    user_properties: user_kv(),
                    maximum_packet_size: Some(nz32(1024)),
                    wildcard_subscription_available: Some(true),
                    subscription_identifier_available: Some(false),
                    shared_subscription_available: Some(true),
                    ..no_props()
                }.into(),
            }),
        ),
    ]
}

fn publish_with_every_property() -> Packet {
    publish(
        Delivery::AtLeastOnce(pid(1)),
        Some(topic("a/b")),
        Properties {
            payload_format_indicator: Some(PayloadFormat::Utf8),
            message_expiry_interval: Some(10),
            content_type: Some(string("txt")),
            response_topic: Some(topic("r/1")),
            correlation_data: Some(Bytes::from_static(&[0xBE, 0xEF])),
            subscription_identifiers: vec![nz32(5), nz32(128)],
            topic_alias: Some(nz16(2)),
            user_properties: user_kv(),
            ..no_props()
        },
        Bytes::from_static(b"{}"),
    )
}

fn publish_rows() -> Vec<Valid> {
    use Receiver::{Client, Server};

    vec![
        valid(
            "3.1.1 PUBLISH QoS 0",
            V3_1_1,
            Client,
            &[
                0x30, 0x0A, 0x00, 0x03, b'a', b'/', b'b', b'h', b'e', b'l', b'l', b'o',
            ],
            publish(
                Delivery::AtMostOnce,
                Some(topic("a/b")),
                no_props(),
                Bytes::from_static(b"hello"),
            ),
        ),
        valid(
            "3.1.1 PUBLISH QoS 1 with DUP and RETAIN",
            V3_1_1,
            Client,
            &[
                0x3B, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, b'h', b'i',
            ],
            Packet::Publish(Publish {
                dup: true,
                delivery: Delivery::AtLeastOnce(pid(10)),
                retain: true,
                topic: Some(topic("a/b")),
                properties: no_props().into(),
                payload: Bytes::from_static(b"hi"),
            }),
        ),
        valid(
            "3.1.1 PUBLISH QoS 2 with empty payload from a client",
            V3_1_1,
            Server,
            &[0x34, 0x05, 0x00, 0x01, b't', 0x12, 0x34],
            publish(
                Delivery::ExactlyOnce(pid(0x1234)),
                Some(topic("t")),
                no_props(),
                Bytes::new(),
            ),
        ),
        valid(
            "5.0 PUBLISH QoS 0 without properties",
            V5,
            Client,
            &[0x30, 0x08, 0x00, 0x03, b'a', b'/', b'b', 0x00, b'h', b'i'],
            publish(
                Delivery::AtMostOnce,
                Some(topic("a/b")),
                no_props(),
                Bytes::from_static(b"hi"),
            ),
        ),
        valid(
            "5.0 PUBLISH QoS 1 with every PUBLISH property",
            V5,
            Client,
            &[
                0x32, 0x31, // QoS 1, remaining length 49
                0x00, 0x03, b'a', b'/', b'b', 0x00, 0x01, // topic, packet identifier 1
                0x27, // property length 39
                0x01, 0x01, // payload format indicator UTF-8
                0x02, 0x00, 0x00, 0x00, 0x0A, // message expiry interval 10
                0x23, 0x00, 0x02, // topic alias 2
                0x08, 0x00, 0x03, b'r', b'/', b'1', // response topic
                0x09, 0x00, 0x02, 0xBE, 0xEF, // correlation data
                0x03, 0x00, 0x03, b't', b'x', b't', // content type
                0x0B, 0x05, // subscription identifier 5
                0x0B, 0x80, 0x01, // subscription identifier 128, two bytes
                0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // user property
                b'{', b'}',
            ],
            publish_with_every_property(),
        ),
        // The specification fixes no property order, so a receiver accepts any.
        decode_only(
            "5.0 PUBLISH properties in identifier order",
            V5,
            Client,
            &[
                0x32, 0x31, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x01, 0x27, //
                0x01, 0x01, // payload format indicator UTF-8
                0x02, 0x00, 0x00, 0x00, 0x0A, // message expiry interval 10
                0x03, 0x00, 0x03, b't', b'x', b't', // content type
                0x08, 0x00, 0x03, b'r', b'/', b'1', // response topic
                0x09, 0x00, 0x02, 0xBE, 0xEF, // correlation data
                0x0B, 0x05, // subscription identifier 5
                0x0B, 0x80, 0x01, // subscription identifier 128, two bytes
                0x23, 0x00, 0x02, // topic alias 2
                0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // user property
                b'{', b'}',
            ],
            publish_with_every_property(),
        ),
        valid(
            "5.0 PUBLISH with empty topic and topic alias",
            V5,
            Client,
            &[0x30, 0x07, 0x00, 0x00, 0x03, 0x23, 0x00, 0x07, b'x'],
            publish(
                Delivery::AtMostOnce,
                None,
                Properties {
                    topic_alias: Some(nz16(7)),
                    ..no_props()
                },
                Bytes::from_static(b"x"),
            ),
        ),
        valid(
            "5.0 PUBLISH subscription identifier 268435455",
            V5,
            Client,
            &[
                0x30, 0x09, 0x00, 0x01, b't', 0x05, 0x0B, 0xFF, 0xFF, 0xFF, 0x7F,
            ],
            publish(
                Delivery::AtMostOnce,
                Some(topic("t")),
                Properties {
                    subscription_identifiers: vec![nz32(268_435_455)],
                    ..no_props()
                },
                Bytes::new(),
            ),
        ),
    ]
}

#[rustfmt::skip] // One row per line reads as a table.
fn acknowledgement_rows() -> Vec<Valid> {
    use Receiver::{Client, Server};

    let puback = |id, reason, properties| {
        Packet::PubAck(PubAck {
            packet_id: pid(id),
            reason,
            properties,
        })
    };
    let pubrec = |id, reason| {
        Packet::PubRec(PubRec {
            packet_id: pid(id),
            reason,
            properties: no_props().into(),
        })
    };
    let pubrel = |id, reason| {
        Packet::PubRel(PubRel {
            packet_id: pid(id),
            reason,
            properties: no_props().into(),
        })
    };
    let pubcomp = |id, reason| {
        Packet::PubComp(PubComp {
            packet_id: pid(id),
            reason,
            properties: no_props().into(),
        })
    };

    vec![
        valid("3.1.1 PUBACK", V3_1_1, Client, &[0x40, 0x02, 0x00, 0x0A], puback(10, PubAckReason::Success, no_props().into())),
        valid("3.1.1 PUBREC", V3_1_1, Client, &[0x50, 0x02, 0x00, 0x0B], pubrec(11, PubAckReason::Success)),
        valid("3.1.1 PUBREL", V3_1_1, Client, &[0x62, 0x02, 0x00, 0x0C], pubrel(12, PubCompReason::Success)),
        valid("3.1.1 PUBCOMP", V3_1_1, Client, &[0x70, 0x02, 0x00, 0x0D], pubcomp(13, PubCompReason::Success)),
        valid("3.1.1 PUBACK from a client", V3_1_1, Server, &[0x40, 0x02, 0xFF, 0xFF], puback(0xFFFF, PubAckReason::Success, no_props().into())),
        valid("5.0 PUBACK success short form", V5, Client, &[0x40, 0x02, 0x00, 0x0A], puback(10, PubAckReason::Success, no_props().into())),
        valid("5.0 PUBACK reason code only", V5, Client, &[0x40, 0x03, 0x00, 0x0A, 0x10], puback(10, PubAckReason::NoMatchingSubscribers, no_props().into())),
        valid(
            "5.0 PUBACK with reason string",
            V5,
            Client,
            &[
                0x40, 0x0A, 0x00, 0x0A, 0x87, 0x06, 0x1F, 0x00, 0x03, b'b', b'a', b'd',
            ],
            puback(
                10,
                PubAckReason::NotAuthorized,
                Properties {
                    reason_string: Some(string("bad")),
                    ..no_props()
                }.into(),
            ),
        ),
        decode_only("5.0 PUBACK success spelled out", V5, Client, &[0x40, 0x03, 0x00, 0x0A, 0x00], puback(10, PubAckReason::Success, no_props().into())),
        decode_only("5.0 PUBACK empty property length", V5, Client, &[0x40, 0x04, 0x00, 0x0A, 0x00, 0x00], puback(10, PubAckReason::Success, no_props().into())),
        valid("5.0 PUBREC packet identifier in use", V5, Client, &[0x50, 0x03, 0x00, 0x0B, 0x91], pubrec(11, PubAckReason::PacketIdentifierInUse)),
        valid("5.0 PUBREL packet identifier not found", V5, Client, &[0x62, 0x03, 0x00, 0x0C, 0x92], pubrel(12, PubCompReason::PacketIdentifierNotFound)),
        valid("5.0 PUBCOMP packet identifier not found", V5, Client, &[0x70, 0x03, 0x00, 0x0D, 0x92], pubcomp(13, PubCompReason::PacketIdentifierNotFound)),
        valid("5.0 PUBCOMP success", V5, Server, &[0x70, 0x02, 0x00, 0x0D], pubcomp(13, PubCompReason::Success)),
    ]
}

fn subscription_rows() -> Vec<Valid> {
    use Receiver::{Client, Server};

    vec![
        valid(
            "3.1.1 SUBSCRIBE two filters",
            V3_1_1,
            Server,
            &[
                0x82, 0x0C, 0x00, 0x0A, //
                0x00, 0x03, b'a', b'/', b'+', 0x01, //
                0x00, 0x01, b'#', 0x02,
            ],
            Packet::Subscribe(Subscribe {
                packet_id: pid(10),
                filters: vec![
                    (
                        filter("a/+"),
                        SubscriptionOptions::with_qos(QoS::AtLeastOnce),
                    ),
                    (filter("#"), SubscriptionOptions::with_qos(QoS::ExactlyOnce)),
                ],
                properties: no_props().into(),
            }),
        ),
        valid(
            "5.0 SUBSCRIBE with options and subscription identifier",
            V5,
            Server,
            &[
                0x82, 0x1F, 0x00, 0x0B, // remaining length 31, packet identifier 11
                0x09, 0x0B, 0x07, // property length 9, subscription identifier 7
                0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // user property
                0x00, 0x03, b'a', b'/', b'b', // filter
                0x2D, // retain handling 2, retain as published, no local, QoS 1
                0x00, 0x0A, b'$', b's', b'h', b'a', b'r', b'e', b'/', b'g', b'/', b'x', //
                0x00, // QoS 0, default options
            ],
            Packet::Subscribe(Subscribe {
                packet_id: pid(11),
                filters: vec![
                    (
                        filter("a/b"),
                        SubscriptionOptions {
                            qos: QoS::AtLeastOnce,
                            no_local: true,
                            retain_as_published: true,
                            retain_handling: RetainHandling::DoNotSend,
                        },
                    ),
                    (filter("$share/g/x"), SubscriptionOptions::default()),
                ],
                properties: Properties {
                    subscription_identifiers: vec![nz32(7)],
                    user_properties: user_kv(),
                    ..no_props()
                }
                .into(),
            }),
        ),
        valid(
            "3.1.1 SUBACK granted and failed",
            V3_1_1,
            Client,
            &[0x90, 0x05, 0x00, 0x0A, 0x01, 0x80, 0x02],
            Packet::SubAck(SubAck {
                packet_id: pid(10),
                reasons: vec![
                    SubAckReason::GrantedQoS1,
                    SubAckReason::UnspecifiedError,
                    SubAckReason::GrantedQoS2,
                ],
                properties: no_props().into(),
            }),
        ),
        valid(
            "5.0 SUBACK with reason string",
            V5,
            Client,
            &[
                0x90, 0x0B, 0x00, 0x0A, 0x05, 0x1F, 0x00, 0x02, b'n', b'o', 0x00, 0x87, 0xA2,
            ],
            Packet::SubAck(SubAck {
                packet_id: pid(10),
                reasons: vec![
                    SubAckReason::GrantedQoS0,
                    SubAckReason::NotAuthorized,
                    SubAckReason::WildcardSubscriptionsNotSupported,
                ],
                properties: Properties {
                    reason_string: Some(string("no")),
                    ..no_props()
                }
                .into(),
            }),
        ),
        valid(
            "3.1.1 UNSUBSCRIBE",
            V3_1_1,
            Server,
            &[0xA2, 0x07, 0x00, 0x0C, 0x00, 0x03, b'a', b'/', b'b'],
            Packet::Unsubscribe(Unsubscribe {
                packet_id: pid(12),
                filters: vec![filter("a/b")],
                properties: no_props().into(),
            }),
        ),
        valid(
            "5.0 UNSUBSCRIBE two filters",
            V5,
            Server,
            &[
                0xA2, 0x0B, 0x00, 0x0C, 0x00, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x01, b'#',
            ],
            Packet::Unsubscribe(Unsubscribe {
                packet_id: pid(12),
                filters: vec![filter("a/b"), filter("#")],
                properties: no_props().into(),
            }),
        ),
        valid(
            "3.1.1 UNSUBACK",
            V3_1_1,
            Client,
            &[0xB0, 0x02, 0x00, 0x0C],
            Packet::UnsubAck(UnsubAck {
                packet_id: pid(12),
                reasons: Vec::new(),
                properties: no_props().into(),
            }),
        ),
        valid(
            "5.0 UNSUBACK two reason codes",
            V5,
            Client,
            &[0xB0, 0x05, 0x00, 0x0C, 0x00, 0x00, 0x11],
            Packet::UnsubAck(UnsubAck {
                packet_id: pid(12),
                reasons: vec![
                    UnsubAckReason::Success,
                    UnsubAckReason::NoSubscriptionExisted,
                ],
                properties: no_props().into(),
            }),
        ),
        valid(
            "5.0 UNSUBACK with reason string",
            V5,
            Client,
            &[
                0xB0, 0x09, 0x00, 0x0C, 0x05, 0x1F, 0x00, 0x02, b'o', b'k', 0x80,
            ],
            Packet::UnsubAck(UnsubAck {
                packet_id: pid(12),
                reasons: vec![UnsubAckReason::UnspecifiedError],
                properties: Properties {
                    reason_string: Some(string("ok")),
                    ..no_props()
                }
                .into(),
            }),
        ),
    ]
}

#[rustfmt::skip] // One row per line reads as a table.
fn session_end_rows() -> Vec<Valid> {
    use Receiver::{Client, Server};

    let disconnect = |reason, properties| Packet::Disconnect(Disconnect { reason, properties });
    let auth = |reason, properties| Packet::Auth(Auth { reason, properties });

    vec![
        valid("3.1.1 PINGREQ", V3_1_1, Server, &[0xC0, 0x00], Packet::PingReq),
        valid("3.1.1 PINGRESP", V3_1_1, Client, &[0xD0, 0x00], Packet::PingResp),
        valid("5.0 PINGREQ", V5, Server, &[0xC0, 0x00], Packet::PingReq),
        valid("5.0 PINGRESP", V5, Client, &[0xD0, 0x00], Packet::PingResp),
        valid("3.1.1 DISCONNECT", V3_1_1, Server, &[0xE0, 0x00], disconnect(DisconnectReason::NormalDisconnection, no_props().into())),
        valid("5.0 DISCONNECT normal short form", V5, Server, &[0xE0, 0x00], disconnect(DisconnectReason::NormalDisconnection, no_props().into())),
        decode_only("5.0 DISCONNECT normal spelled out", V5, Server, &[0xE0, 0x01, 0x00], disconnect(DisconnectReason::NormalDisconnection, no_props().into())),
        valid("5.0 DISCONNECT with will message", V5, Server, &[0xE0, 0x01, 0x04], disconnect(DisconnectReason::DisconnectWithWillMessage, no_props().into())),
        decode_only("5.0 DISCONNECT with will message and empty property length", V5, Server, &[0xE0, 0x02, 0x04, 0x00], disconnect(DisconnectReason::DisconnectWithWillMessage, no_props().into())),
        valid(
            "5.0 DISCONNECT with session expiry from a client",
            V5,
            Server,
            &[0xE0, 0x07, 0x00, 0x05, 0x11, 0x00, 0x00, 0x00, 0x00],
            disconnect(
                DisconnectReason::NormalDisconnection,
                Properties {
                    session_expiry_interval: Some(0),
                    ..no_props()
                }.into(),
            ),
        ),
        valid("5.0 DISCONNECT session taken over", V5, Client, &[0xE0, 0x01, 0x8E], disconnect(DisconnectReason::SessionTakenOver, no_props().into())),
        decode_only("5.0 DISCONNECT session taken over and empty property length", V5, Client, &[0xE0, 0x02, 0x8E, 0x00], disconnect(DisconnectReason::SessionTakenOver, no_props().into())),
        valid(
            "5.0 DISCONNECT with server reference",
            V5,
            Client,
            &[0xE0, 0x06, 0x9C, 0x04, 0x1C, 0x00, 0x01, b's'],
            disconnect(
                DisconnectReason::UseAnotherServer,
                Properties {
                    server_reference: Some(string("s")),
                    ..no_props()
                }.into(),
            ),
        ),
        valid("5.0 AUTH success short form", V5, Client, &[0xF0, 0x00], auth(AuthReason::Success, no_props().into())),
        valid(
            "5.0 AUTH continue with method and data",
            V5,
            Client,
            &[
                0xF0, 0x10, 0x18, 0x0E, //
                0x15, 0x00, 0x05, b'S', b'C', b'R', b'A', b'M', //
                0x16, 0x00, 0x03, 0x01, 0x02, 0x03,
            ],
            auth(
                AuthReason::ContinueAuthentication,
                Properties {
                    authentication_method: Some(string("SCRAM")),
                    authentication_data: Some(Bytes::from_static(&[1, 2, 3])),
                    ..no_props()
                }.into(),
            ),
        ),
        valid(
            "5.0 AUTH re-authenticate from a client",
            V5,
            Server,
            &[0xF0, 0x06, 0x19, 0x04, 0x15, 0x00, 0x01, b'm'],
            auth(
                AuthReason::ReAuthenticate,
                Properties {
                    authentication_method: Some(string("m")),
                    ..no_props()
                }.into(),
            ),
        ),
    ]
}

fn valid_rows() -> Vec<Valid> {
    let mut rows = connect_rows();
    rows.extend(connack_rows());
    rows.extend(publish_rows());
    rows.extend(acknowledgement_rows());
    rows.extend(subscription_rows());
    rows.extend(session_end_rows());
    rows
}

/// Returns the versions a row applies to: a 3.1.1 row other than CONNECT also holds
/// for 3.1, whose packets differ only in CONNECT.
fn row_versions(version: ProtocolVersion, packet: Option<&Packet>) -> Vec<ProtocolVersion> {
    let is_connect = matches!(packet, Some(Packet::Connect(_)));
    if version == V3_1_1 && !is_connect {
        vec![V3_1_1, V3_1]
    } else {
        vec![version]
    }
}

fn row_decoder(receiver: Receiver, version: ProtocolVersion, packet: &Packet) -> Decoder {
    if matches!(packet, Packet::Connect(_)) {
        Decoder::for_server()
    } else {
        decoder(receiver, version)
    }
}

#[test]
fn valid_rows_decode_to_expected_packet() {
    let mut checked = 0;
    for row in valid_rows() {
        for version in row_versions(row.version, Some(&row.packet)) {
            let mut decoder = row_decoder(row.receiver, version, &row.packet);
            let (packets, left) = decode_all(&mut decoder, row.bytes).unwrap_or_else(|error| {
                panic!("{} ({version:?}): decode failed: {error}", row.name)
            });
            assert_eq!(
                packets,
                vec![row.packet.clone()],
                "{} ({version:?})",
                row.name
            );
            assert_eq!(
                left, 0,
                "{} ({version:?}): bytes left in the buffer",
                row.name
            );
            checked += 1;
        }
    }
    assert!(checked > 60, "only {checked} rows checked");
}

#[test]
fn valid_rows_encode_to_expected_bytes() {
    let mut failures = Vec::new();
    for row in valid_rows().into_iter().filter(|row| row.canonical) {
        for version in row_versions(row.version, Some(&row.packet)) {
            let mut dst = BytesMut::new();
            if let Err(error) = encode(&row.packet, version, DEFAULT_MAX_PACKET_SIZE, &mut dst) {
                failures.push(format!(
                    "{} ({version:?}): encode failed: {error}",
                    row.name
                ));
                continue;
            }
            if dst.as_ref() != row.bytes {
                failures.push(format!(
                    "{} ({version:?}): wrote {:02X?}, expected {:02X?}",
                    row.name,
                    dst.as_ref(),
                    row.bytes
                ));
            }
            match encoded_len(&row.packet, version) {
                Ok(len) if len == dst.len() => {}
                other => failures.push(format!(
                    "{} ({version:?}): encoded_len {other:?}, wrote {} bytes",
                    row.name,
                    dst.len()
                )),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn server_decoder_learns_version_from_connect() {
    for row in connect_rows() {
        let mut decoder = Decoder::for_server();
        decode_all(&mut decoder, row.bytes).unwrap();
        assert_eq!(decoder.version(), Some(row.version), "{}", row.name);
    }
}

#[rustfmt::skip] // One row per line reads as a table.
fn malformed_rows() -> Vec<Invalid> {
    use DisconnectReason::{MalformedPacket, ProtocolError, TopicAliasInvalid};
    use Receiver::{Client, Server};

    const CONNECT_311: &[u8] = &[0x10, 0x0F, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x03, b'a', b'b', b'c'];

    vec![
        // Fixed header and remaining length.
        invalid("remaining length of 5 bytes", V3_1_1, Client, &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], kind!(VariableByteIntegerTooLong), MalformedPacket),
        invalid("remaining length of 5 bytes in 5.0", V5, Client, &[0x30, 0x80, 0x80, 0x80, 0x80, 0x00], kind!(VariableByteIntegerTooLong), MalformedPacket),
        invalid("remaining length not minimal", V5, Client, &[0xD0, 0x80, 0x00], kind!(NonMinimalVariableByteInteger), MalformedPacket),
        invalid("packet type 0", V3_1_1, Client, &[0x00, 0x00], kind!(ReservedPacketType), MalformedPacket),
        invalid("packet type 0 in 5.0", V5, Server, &[0x00, 0x00], kind!(ReservedPacketType), MalformedPacket),
        invalid("AUTH under 3.1.1", V3_1_1, Client, &[0xF0, 0x00], kind!(ReservedPacketType), MalformedPacket),
        invalid("AUTH under 3.1.1 to a server", V3_1_1, Server, &[0xF0, 0x00], kind!(ReservedPacketType), MalformedPacket),
        // Reserved flags of the fixed header [MQTT-2.1.3-1].
        invalid("PUBREL flags 0000", V3_1_1, Client, &[0x60, 0x02, 0x00, 0x01], kind!(InvalidFixedHeaderFlags), MalformedPacket),
        invalid("PUBREL flags 0000 in 5.0", V5, Client, &[0x60, 0x02, 0x00, 0x01], kind!(InvalidFixedHeaderFlags), MalformedPacket),
        invalid("PUBACK flags 0001", V3_1_1, Client, &[0x41, 0x02, 0x00, 0x01], kind!(InvalidFixedHeaderFlags), MalformedPacket),
        invalid("CONNACK flags 1000", V5, Client, &[0x28, 0x03, 0x00, 0x00, 0x00], kind!(InvalidFixedHeaderFlags), MalformedPacket),
        invalid("PINGRESP flags 0001", V3_1_1, Client, &[0xD1, 0x00], kind!(InvalidFixedHeaderFlags), MalformedPacket),
        invalid("SUBSCRIBE flags 0000", V3_1_1, Server, &[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00], kind!(InvalidFixedHeaderFlags), MalformedPacket),
        invalid("UNSUBSCRIBE flags 0000", V5, Server, &[0xA0, 0x06, 0x00, 0x01, 0x00, 0x00, 0x01, b'a'], kind!(InvalidFixedHeaderFlags), MalformedPacket),
        invalid("CONNECT flags 0001", V3_1_1, Server, &[0x11, 0x0F, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x03, b'a', b'b', b'c'], kind!(InvalidFixedHeaderFlags), MalformedPacket),
        invalid("DISCONNECT flags 0010", V5, Server, &[0xE2, 0x00], kind!(InvalidFixedHeaderFlags), MalformedPacket),
        invalid("AUTH flags 0001", V5, Client, &[0xF1, 0x00], kind!(InvalidFixedHeaderFlags), MalformedPacket),
        invalid("CONNACK reserved acknowledge flag", V3_1_1, Client, &[0x20, 0x02, 0x02, 0x00], kind!(ConnAckReservedFlags), MalformedPacket),
        invalid("CONNACK reserved acknowledge flag in 5.0", V5, Client, &[0x20, 0x03, 0x80, 0x00, 0x00], kind!(ConnAckReservedFlags), MalformedPacket),
        invalid("CONNACK session present on failure", V3_1_1, Client, &[0x20, 0x02, 0x01, 0x05], kind!(SessionPresentOnFailure), ProtocolError),
        // Remaining length disagreeing with the content.
        invalid("PUBACK remaining length 3", V3_1_1, Client, &[0x40, 0x03, 0x00, 0x01, 0x00], kind!(TrailingBytes), MalformedPacket),
        invalid("PUBACK remaining length 1", V5, Client, &[0x40, 0x01, 0x00], kind!(Truncated), MalformedPacket),
        invalid("CONNACK remaining length 3", V3_1_1, Client, &[0x20, 0x03, 0x00, 0x00, 0x00], kind!(TrailingBytes), MalformedPacket),
        invalid("CONNACK without property length", V5, Client, &[0x20, 0x02, 0x00, 0x00], kind!(Truncated), MalformedPacket),
        invalid("PINGRESP remaining length 1", V3_1_1, Client, &[0xD0, 0x01, 0x00], kind!(TrailingBytes), MalformedPacket),
        invalid("PUBLISH topic longer than packet", V3_1_1, Client, &[0x32, 0x04, 0x00, 0x03, b'a', b'/'], kind!(Truncated), MalformedPacket),
        invalid("PUBLISH QoS 1 without packet identifier", V3_1_1, Client, &[0x32, 0x03, 0x00, 0x01, b't'], kind!(Truncated), MalformedPacket),
        invalid("PUBLISH property length beyond packet", V5, Client, &[0x30, 0x05, 0x00, 0x01, b't', 0x09, 0x01], kind!(Truncated), MalformedPacket),
        invalid("PUBLISH 5.0 without property length", V5, Client, &[0x30, 0x03, 0x00, 0x01, b't'], kind!(Truncated), MalformedPacket),
        invalid("CONNECT client identifier beyond packet", V3_1_1, Server, &[0x10, 0x0E, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x05, b'a', b'b'], kind!(Truncated), MalformedPacket),
        invalid("CONNECT with trailing byte", V3_1_1, Server, &[0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x03, b'a', b'b', b'c', 0x00], kind!(TrailingBytes), MalformedPacket),
        invalid("SUBACK without reason codes", V5, Client, &[0x90, 0x03, 0x00, 0x01, 0x00], kind!(NoReasonCodes), ProtocolError),
        invalid("UNSUBACK without reason codes", V5, Client, &[0xB0, 0x03, 0x00, 0x01, 0x00], kind!(NoReasonCodes), ProtocolError),
        // QoS 3 and packet identifier 0.
        invalid("PUBLISH QoS 3", V3_1_1, Client, &[0x36, 0x07, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x01], kind!(InvalidQoS), MalformedPacket),
        invalid("PUBLISH QoS 3 in 5.0", V5, Client, &[0x36, 0x08, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x01, 0x00], kind!(InvalidQoS), MalformedPacket),
        invalid("will QoS 3", V3_1_1, Server, &[0x10, 0x13, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x1E, 0x00, 0x00, 0x00, 0x01, b'c', 0x00, 0x01, b'w', 0x00, 0x01, b'x'], kind!(InvalidWillQoS), MalformedPacket),
        invalid("subscription QoS 3", V3_1_1, Server, &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x03], kind!(InvalidSubscriptionOptions), MalformedPacket),
        invalid("PUBLISH packet identifier 0", V3_1_1, Client, &[0x32, 0x07, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x00], kind!(ZeroPacketId), ProtocolError),
        invalid("PUBACK packet identifier 0", V5, Client, &[0x40, 0x02, 0x00, 0x00], kind!(ZeroPacketId), ProtocolError),
        invalid("PUBREL packet identifier 0", V3_1_1, Server, &[0x62, 0x02, 0x00, 0x00], kind!(ZeroPacketId), ProtocolError),
        invalid("SUBACK packet identifier 0", V3_1_1, Client, &[0x90, 0x03, 0x00, 0x00, 0x00], kind!(ZeroPacketId), ProtocolError),
        invalid("SUBSCRIBE packet identifier 0", V3_1_1, Server, &[0x82, 0x06, 0x00, 0x00, 0x00, 0x01, b'a', 0x00], kind!(ZeroPacketId), ProtocolError),
        // Strings [MQTT-1.5.4-1] [MQTT-1.5.4-2].
        invalid("PUBLISH topic invalid UTF-8", V3_1_1, Client, &[0x30, 0x05, 0x00, 0x02, 0xC3, 0x28, b'x'], kind!(InvalidUtf8), MalformedPacket),
        invalid("PUBLISH topic UTF-16 surrogate", V5, Client, &[0x30, 0x07, 0x00, 0x03, 0xED, 0xA0, 0x80, 0x00, b'x'], kind!(InvalidUtf8), MalformedPacket),
        invalid("PUBLISH topic with U+0000", V3_1_1, Client, &[0x30, 0x05, 0x00, 0x02, b'a', 0x00, b'x'], kind!(NullCharacter), MalformedPacket),
        invalid("PUBLISH topic with U+0001", V5, Client, &[0x30, 0x06, 0x00, 0x02, b'a', 0x01, 0x00, b'x'], kind!(DisallowedCharacter), MalformedPacket),
        invalid("CONNECT client identifier with U+0000", V3_1_1, Server, &[0x10, 0x0F, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x03, b'a', 0x00, b'c'], kind!(NullCharacter), MalformedPacket),
        invalid("user property invalid UTF-8", V5, Client, &[0x40, 0x0B, 0x00, 0x01, 0x80, 0x07, 0x26, 0x00, 0x01, 0xFF, 0x00, 0x01, b'v'], kind!(InvalidUtf8), MalformedPacket),
        invalid("reason string with U+0000", V5, Client, &[0x40, 0x08, 0x00, 0x01, 0x80, 0x04, 0x1F, 0x00, 0x01, 0x00], kind!(NullCharacter), MalformedPacket),
        invalid("SUBSCRIBE filter invalid UTF-8", V3_1_1, Server, &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, 0x80, 0x00], kind!(InvalidUtf8), MalformedPacket),
        // Topic names and filters.
        invalid("PUBLISH topic with wildcard", V3_1_1, Client, &[0x30, 0x05, 0x00, 0x02, b'a', b'+', b'x'], kind!(InvalidTopic), MalformedPacket),
        invalid("PUBLISH empty topic in 3.1.1", V3_1_1, Client, &[0x30, 0x03, 0x00, 0x00, b'x'], kind!(MissingTopic), ProtocolError),
        invalid("PUBLISH empty topic without alias", V5, Client, &[0x30, 0x04, 0x00, 0x00, 0x00, b'x'], kind!(MissingTopic), ProtocolError),
        invalid("SUBSCRIBE misplaced multi-level wildcard", V3_1_1, Server, &[0x82, 0x08, 0x00, 0x01, 0x00, 0x03, b'#', b'/', b'a', 0x00], kind!(InvalidTopic), MalformedPacket),
        invalid("SUBSCRIBE without filters", V3_1_1, Server, &[0x82, 0x02, 0x00, 0x01], kind!(NoTopicFilters), ProtocolError),
        invalid("UNSUBSCRIBE without filters", V5, Server, &[0xA2, 0x03, 0x00, 0x01, 0x00], kind!(NoTopicFilters), ProtocolError),
        invalid("SUBSCRIBE reserved option bits", V5, Server, &[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x40], kind!(InvalidSubscriptionOptions), MalformedPacket),
        invalid("SUBSCRIBE 3.1.1 with no local bit", V3_1_1, Server, &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x04], kind!(InvalidSubscriptionOptions), MalformedPacket),
        invalid("SUBSCRIBE retain handling 3", V5, Server, &[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x30], kind!(InvalidRetainHandling), ProtocolError),
        invalid("SUBSCRIBE no local on shared subscription", V5, Server, &[0x82, 0x10, 0x00, 0x01, 0x00, 0x00, 0x0A, b'$', b's', b'h', b'a', b'r', b'e', b'/', b'g', b'/', b'x', 0x04], kind!(NoLocalOnSharedSubscription), ProtocolError),
        // Properties.
        invalid("PUBLISH with session expiry interval", V5, Client, &[0x30, 0x09, 0x00, 0x01, b't', 0x05, 0x11, 0x00, 0x00, 0x00, 0x01], kind!(PropertyNotAllowed), MalformedPacket),
        invalid("PUBACK with topic alias", V5, Client, &[0x40, 0x07, 0x00, 0x01, 0x00, 0x03, 0x23, 0x00, 0x01], kind!(PropertyNotAllowed), MalformedPacket),
        invalid("CONNACK with will delay interval", V5, Client, &[0x20, 0x08, 0x00, 0x00, 0x05, 0x18, 0x00, 0x00, 0x00, 0x01], kind!(PropertyNotAllowed), MalformedPacket),
        invalid("PUBLISH message expiry twice", V5, Client, &[0x30, 0x0E, 0x00, 0x01, b't', 0x0A, 0x02, 0x00, 0x00, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x02], kind!(DuplicateProperty), ProtocolError),
        invalid("CONNACK receive maximum twice", V5, Client, &[0x20, 0x09, 0x00, 0x00, 0x06, 0x21, 0x00, 0x01, 0x21, 0x00, 0x02], kind!(DuplicateProperty), ProtocolError),
        invalid("SUBSCRIBE subscription identifier twice", V5, Server, &[0x82, 0x0B, 0x00, 0x01, 0x04, 0x0B, 0x01, 0x0B, 0x02, 0x00, 0x01, b'a', 0x00], kind!(DuplicateProperty), ProtocolError),
        invalid("PUBLISH property value short", V5, Client, &[0x30, 0x07, 0x00, 0x01, b't', 0x03, 0x02, 0x00, 0x00], kind!(Truncated), MalformedPacket),
        invalid("PUBLISH property value missing", V5, Client, &[0x30, 0x05, 0x00, 0x01, b't', 0x01, 0x02], kind!(Truncated), MalformedPacket),
        invalid("PUBLISH string property short", V5, Client, &[0x30, 0x08, 0x00, 0x01, b't', 0x04, 0x03, 0x00, 0x05, b'a'], kind!(Truncated), MalformedPacket),
        invalid("PUBLISH unknown property 0x07", V5, Client, &[0x30, 0x06, 0x00, 0x01, b't', 0x02, 0x07, 0x00], kind!(UnknownProperty), MalformedPacket),
        invalid("CONNACK unknown property 0x00", V5, Client, &[0x20, 0x05, 0x00, 0x00, 0x02, 0x00, 0x00], kind!(UnknownProperty), MalformedPacket),
        invalid("PUBLISH topic alias 0", V5, Client, &[0x30, 0x07, 0x00, 0x01, b't', 0x03, 0x23, 0x00, 0x00], kind!(ZeroTopicAlias), TopicAliasInvalid),
        invalid("PUBLISH subscription identifier 0", V5, Client, &[0x30, 0x06, 0x00, 0x01, b't', 0x02, 0x0B, 0x00], kind!(InvalidPropertyValue), ProtocolError),
        invalid("PUBLISH payload format 2", V5, Client, &[0x30, 0x06, 0x00, 0x01, b't', 0x02, 0x01, 0x02], kind!(InvalidPropertyValue), ProtocolError),
        invalid("CONNACK receive maximum 0", V5, Client, &[0x20, 0x06, 0x00, 0x00, 0x03, 0x21, 0x00, 0x00], kind!(InvalidPropertyValue), ProtocolError),
        invalid("CONNACK maximum QoS 2", V5, Client, &[0x20, 0x05, 0x00, 0x00, 0x02, 0x24, 0x02], kind!(InvalidPropertyValue), ProtocolError),
        invalid("CONNACK maximum packet size 0", V5, Client, &[0x20, 0x08, 0x00, 0x00, 0x05, 0x27, 0x00, 0x00, 0x00, 0x00], kind!(InvalidPropertyValue), ProtocolError),
        invalid("CONNACK retain available 2", V5, Client, &[0x20, 0x05, 0x00, 0x00, 0x02, 0x25, 0x02], kind!(InvalidPropertyValue), ProtocolError),
        invalid("server DISCONNECT with session expiry", V5, Client, &[0xE0, 0x07, 0x00, 0x05, 0x11, 0x00, 0x00, 0x00, 0x00], kind!(SessionExpiryFromServer), ProtocolError),
        // Reason codes not allowed on the packet.
        invalid("CONNACK reason code 0x10", V5, Client, &[0x20, 0x03, 0x00, 0x10, 0x00], kind!(InvalidReasonCode), MalformedPacket),
        invalid("CONNACK return code 6", V3_1_1, Client, &[0x20, 0x02, 0x00, 0x06], kind!(InvalidReasonCode), MalformedPacket),
        invalid("PUBACK reason code 0x92", V5, Client, &[0x40, 0x03, 0x00, 0x01, 0x92], kind!(InvalidReasonCode), MalformedPacket),
        invalid("PUBREC reason code 0x01", V5, Client, &[0x50, 0x03, 0x00, 0x01, 0x01], kind!(InvalidReasonCode), MalformedPacket),
        invalid("PUBREL reason code 0x10", V5, Client, &[0x62, 0x03, 0x00, 0x01, 0x10], kind!(InvalidReasonCode), MalformedPacket),
        invalid("PUBCOMP reason code 0x80", V5, Client, &[0x70, 0x03, 0x00, 0x01, 0x80], kind!(InvalidReasonCode), MalformedPacket),
        invalid("SUBACK reason code 0x11", V5, Client, &[0x90, 0x04, 0x00, 0x01, 0x00, 0x11], kind!(InvalidReasonCode), MalformedPacket),
        invalid("SUBACK return code 0x03", V3_1_1, Client, &[0x90, 0x03, 0x00, 0x01, 0x03], kind!(InvalidReasonCode), MalformedPacket),
        invalid("SUBACK 3.1.1 return code 0x87", V3_1_1, Client, &[0x90, 0x03, 0x00, 0x01, 0x87], kind!(InvalidReasonCode), MalformedPacket),
        invalid("UNSUBACK reason code 0x01", V5, Client, &[0xB0, 0x04, 0x00, 0x01, 0x00, 0x01], kind!(InvalidReasonCode), MalformedPacket),
        invalid("DISCONNECT reason code 0x01", V5, Client, &[0xE0, 0x01, 0x01], kind!(InvalidReasonCode), MalformedPacket),
        invalid("AUTH reason code 0x01", V5, Client, &[0xF0, 0x02, 0x01, 0x00], kind!(InvalidReasonCode), MalformedPacket),
        invalid("server DISCONNECT with will message code", V5, Client, &[0xE0, 0x01, 0x04], kind!(ReasonCodeWrongDirection), ProtocolError),
        invalid("client DISCONNECT session taken over", V5, Server, &[0xE0, 0x01, 0x8E], kind!(ReasonCodeWrongDirection), ProtocolError),
        invalid("server AUTH re-authenticate", V5, Client, &[0xF0, 0x02, 0x19, 0x00], kind!(ReasonCodeWrongDirection), ProtocolError),
        // Packets sent in the wrong direction.
        invalid("CONNECT to a client", V3_1_1, Client, CONNECT_311, kind!(UnexpectedPacketType), ProtocolError),
        invalid("CONNECT to a 5.0 client", V5, Client, &[0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C, 0x00, 0x00, 0x03, b'a', b'b', b'c'], kind!(UnexpectedPacketType), ProtocolError),
        invalid("SUBSCRIBE to a client", V3_1_1, Client, &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00], kind!(UnexpectedPacketType), ProtocolError),
        invalid("SUBSCRIBE to a 5.0 client", V5, Client, &[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x00], kind!(UnexpectedPacketType), ProtocolError),
        invalid("UNSUBSCRIBE to a client", V3_1_1, Client, &[0xA2, 0x05, 0x00, 0x01, 0x00, 0x01, b'a'], kind!(UnexpectedPacketType), ProtocolError),
        invalid("UNSUBSCRIBE to a 5.0 client", V5, Client, &[0xA2, 0x06, 0x00, 0x01, 0x00, 0x00, 0x01, b'a'], kind!(UnexpectedPacketType), ProtocolError),
        invalid("PINGREQ to a client", V3_1_1, Client, &[0xC0, 0x00], kind!(UnexpectedPacketType), ProtocolError),
        invalid("PINGREQ to a 5.0 client", V5, Client, &[0xC0, 0x00], kind!(UnexpectedPacketType), ProtocolError),
        invalid("DISCONNECT to a 3.1.1 client", V3_1_1, Client, &[0xE0, 0x00], kind!(UnexpectedPacketType), ProtocolError),
        invalid("CONNACK to a server", V3_1_1, Server, &[0x20, 0x02, 0x00, 0x00], kind!(UnexpectedPacketType), ProtocolError),
        invalid("SUBACK to a server", V5, Server, &[0x90, 0x04, 0x00, 0x01, 0x00, 0x00], kind!(UnexpectedPacketType), ProtocolError),
        invalid("UNSUBACK to a server", V3_1_1, Server, &[0xB0, 0x02, 0x00, 0x01], kind!(UnexpectedPacketType), ProtocolError),
        invalid("PINGRESP to a server", V5, Server, &[0xD0, 0x00], kind!(UnexpectedPacketType), ProtocolError),
        // CONNECT rules.
        invalid("CONNECT reserved flag", V3_1_1, Server, &[0x10, 0x0F, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x03, 0x00, 0x3C, 0x00, 0x03, b'a', b'b', b'c'], kind!(ConnectReservedFlag), MalformedPacket),
        invalid("CONNECT will QoS without will flag", V3_1_1, Server, &[0x10, 0x0F, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x0A, 0x00, 0x3C, 0x00, 0x03, b'a', b'b', b'c'], kind!(WillFlagsWithoutWill), MalformedPacket),
        invalid("CONNECT will retain without will flag", V3_1_1, Server, &[0x10, 0x0F, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x22, 0x00, 0x3C, 0x00, 0x03, b'a', b'b', b'c'], kind!(WillFlagsWithoutWill), MalformedPacket),
        invalid("CONNECT password without user name in 3.1.1", V3_1_1, Server, &[0x10, 0x13, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x42, 0x00, 0x3C, 0x00, 0x03, b'a', b'b', b'c', 0x00, 0x02, b'p', b'w'], kind!(PasswordWithoutUsername), MalformedPacket),
        invalid("CONNECT level 6", V5, Server, &[0x10, 0x0F, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x06, 0x02, 0x00, 0x3C, 0x00, 0x03, b'a', b'b', b'c'], kind!(UnsupportedProtocol), ProtocolError),
        invalid("CONNECT protocol name MQIsdp with level 4", V3_1_1, Server, &[0x10, 0x11, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x03, b'a', b'b', b'c'], kind!(UnsupportedProtocol), ProtocolError),
        invalid("CONNECT protocol name MQTX", V3_1_1, Server, &[0x10, 0x0F, 0x00, 0x04, b'M', b'Q', b'T', b'X', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x03, b'a', b'b', b'c'], kind!(UnsupportedProtocol), ProtocolError),
    ]
}

/// Returns the decoder for an invalid row: a new server decoder for a CONNECT sent to
/// a server, else one that has seen a CONNECT of `version`.
fn invalid_row_decoder(row: &Invalid, version: ProtocolVersion) -> Decoder {
    let is_connect = row.bytes.first().is_some_and(|byte| byte >> 4 == 1);
    if is_connect && row.receiver == Receiver::Server {
        Decoder::for_server()
    } else {
        decoder(row.receiver, version)
    }
}

#[test]
fn invalid_rows_fail_with_reason_code() {
    let mut failures = Vec::new();
    for row in malformed_rows() {
        for version in row_versions(row.version, None) {
            let mut decoder = invalid_row_decoder(&row, version);
            match decode_all(&mut decoder, row.bytes) {
                Ok((packets, left)) => failures.push(format!(
                    "{} ({version:?}): decoded {packets:?} with {left} bytes left",
                    row.name
                )),
                Err(error) if !(row.kind.matches)(&error) => failures.push(format!(
                    "{} ({version:?}): error {error:?}, expected {}",
                    row.name, row.kind.name
                )),
                Err(error) if error.reason_code() != row.reason => failures.push(format!(
                    "{} ({version:?}): reason {:?}, expected {:?} ({error})",
                    row.name,
                    error.reason_code(),
                    row.reason
                )),
                Err(_) => {}
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn oversized_packet_fails_before_body() {
    for version in [V3_1_1, V5] {
        let mut decoder = Decoder::for_client(version).with_max_packet_size(16);
        // Fixed header of a PUBLISH with remaining length 127: 129 bytes in total.
        let mut buf = BytesMut::from(&[0x30, 0x7F][..]);
        let error = decoder.decode(&mut buf).unwrap_err();
        assert_eq!(
            error.reason_code(),
            DisconnectReason::PacketTooLarge,
            "{version:?}"
        );
    }
}

#[test]
fn packet_at_maximum_size_decodes() {
    let mut decoder = Decoder::for_client(V3_1_1).with_max_packet_size(12);
    let bytes = [
        0x30, 0x0A, 0x00, 0x03, b'a', b'/', b'b', b'h', b'e', b'l', b'l', b'o',
    ];
    let (packets, _) = decode_all(&mut decoder, &bytes).unwrap();
    assert_eq!(packets.len(), 1);

    decoder.set_max_packet_size(11);
    let error = decode_all(&mut decoder, &bytes).unwrap_err();
    assert_eq!(error.reason_code(), DisconnectReason::PacketTooLarge);
}

#[test]
fn encode_rejects_packet_over_maximum_size() {
    let packet = publish(
        Delivery::AtMostOnce,
        Some(topic("a/b")),
        no_props(),
        Bytes::from_static(b"hello"),
    );
    let mut dst = BytesMut::new();
    assert!(encode(&packet, V3_1_1, 12, &mut dst).is_ok());

    let mut dst = BytesMut::new();
    assert!(encode(&packet, V3_1_1, 11, &mut dst).is_err());
    assert!(
        dst.is_empty(),
        "a rejected packet must leave the buffer untouched"
    );
}

#[test]
fn one_byte_at_a_time_yields_packet_at_last_byte() {
    for row in valid_rows() {
        let mut decoder = row_decoder(row.receiver, row.version, &row.packet);
        let mut buf = BytesMut::new();
        for (index, byte) in row.bytes.iter().enumerate() {
            buf.extend_from_slice(&[*byte]);
            let decoded = decoder.decode(&mut buf).unwrap();
            if index + 1 < row.bytes.len() {
                assert_eq!(
                    decoded,
                    None,
                    "{}: packet after {} of {} bytes",
                    row.name,
                    index + 1,
                    row.bytes.len()
                );
            } else {
                assert_eq!(decoded.as_ref(), Some(&row.packet), "{}", row.name);
            }
        }
        assert!(buf.is_empty(), "{}: bytes left in the buffer", row.name);
        assert_eq!(decoder.decode(&mut buf).unwrap(), None, "{}", row.name);
    }
}

#[test]
fn two_packets_in_one_buffer_yield_two() {
    let rows = valid_rows();
    let client_rows: Vec<&Valid> = rows
        .iter()
        .filter(|row| row.receiver == Receiver::Client && row.version == V5)
        .collect();
    for pair in client_rows.windows(2) {
        let (first, second) = (pair[0], pair[1]);
        let mut bytes = first.bytes.to_vec();
        bytes.extend_from_slice(second.bytes);
        bytes.push(0xD0); // first byte of a third packet, which must stay in the buffer

        let mut decoder = Decoder::for_client(V5);
        let (packets, left) = decode_all(&mut decoder, &bytes).unwrap();
        assert_eq!(
            packets,
            vec![first.packet.clone(), second.packet.clone()],
            "{} + {}",
            first.name,
            second.name
        );
        assert_eq!(left, 1, "{} + {}", first.name, second.name);
    }
}

#[test]
fn decoded_payload_shares_input_buffer() {
    for (version, bytes) in [
        (
            V3_1_1,
            &[
                0x30, 0x0A, 0x00, 0x03, b'a', b'/', b'b', b'h', b'e', b'l', b'l', b'o',
            ][..],
        ),
        (
            V5,
            &[
                0x30, 0x0B, 0x00, 0x03, b'a', b'/', b'b', 0x00, b'h', b'e', b'l', b'l', b'o',
            ][..],
        ),
    ] {
        let mut buf = BytesMut::with_capacity(64);
        buf.extend_from_slice(bytes);
        let input = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();

        let packet = Decoder::for_client(version)
            .decode(&mut buf)
            .unwrap()
            .unwrap();
        let Packet::Publish(publish) = packet else {
            panic!("expected PUBLISH, got {packet:?}")
        };
        assert_eq!(publish.payload.as_ref(), b"hello");

        let payload = publish.payload.as_ptr() as usize
            ..publish.payload.as_ptr() as usize + publish.payload.len();
        assert!(
            input.start <= payload.start && payload.end <= input.end,
            "{version:?}: payload at {payload:?} is outside the input buffer at {input:?}"
        );
        assert_eq!(
            payload.end, input.end,
            "{version:?}: payload is the last bytes of the input"
        );
    }
}

/// Returns `true` for errors found in the fixed header, before the packet's bytes are
/// split off the buffer.
fn is_fixed_header_error(error: &DecodeError) -> bool {
    matches!(
        error,
        DecodeError::PacketTooLarge { .. }
            | DecodeError::Violation(
                Violation::VariableByteIntegerTooLong
                    | Violation::NonMinimalVariableByteInteger
                    | Violation::ReservedPacketType(_)
                    | Violation::InvalidFixedHeaderFlags { .. }
                    | Violation::InvalidQoS
                    | Violation::UnexpectedPacketType { .. }
                    | Violation::FirstPacketNotConnect { .. }
                    | Violation::SecondConnect
            )
    )
}

#[test]
fn failed_decode_consumes_only_body_errors() {
    // A byte after each packet shows that a failed decode takes at most that packet.
    const NEXT: u8 = 0xC0;
    for row in malformed_rows() {
        let mut decoder = invalid_row_decoder(&row, row.version);
        let mut buf = BytesMut::from(row.bytes);
        buf.extend_from_slice(&[NEXT]);

        let error = decoder.decode(&mut buf).unwrap_err();
        if is_fixed_header_error(&error) {
            assert_eq!(
                &buf[..row.bytes.len()],
                row.bytes,
                "{}: {error:?} changed the buffer",
                row.name
            );
        } else {
            assert_eq!(
                buf.as_ref(),
                [NEXT],
                "{}: {error:?} left other bytes",
                row.name
            );
        }
    }
}

#[test]
fn second_connect_is_protocol_error() {
    let mut decoder = Decoder::for_server();
    let mut buf = BytesMut::from(codec_support::minimal_connect(V3_1_1));
    buf.extend_from_slice(codec_support::minimal_connect(V5));
    assert!(matches!(
        decoder.decode(&mut buf),
        Ok(Some(Packet::Connect(_)))
    ));

    // A second CONNECT on one connection is a Protocol Error [MQTT-3.1.0-2].
    let error = decoder.decode(&mut buf).unwrap_err();
    assert_eq!(error.reason_code(), DisconnectReason::ProtocolError);
    assert_eq!(decoder.version(), Some(V3_1_1));
}
