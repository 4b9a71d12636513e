//! Property tests: every valid packet of every version survives encode then decode
//! unchanged, and `encoded_len` predicts the number of bytes written.
//!
//! The strategies generate only what the version can carry: no properties and no
//! failure reason codes outside MQTT 5.0, no AUTH before 5.0, and reason codes that
//! the sending side may use.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::similar_names
)]

mod codec_support;

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use mqttlink::codec::{
    encode, encoded_len, Auth, AuthReason, ClientId, ConnAck, Connect, ConnectReason, Decoder,
    Delivery, Disconnect, DisconnectReason, LastWill, Packet, PacketId, PayloadFormat, Properties,
    ProtocolVersion, PubAck, PubAckReason, PubComp, PubCompReason, PubRec, PubRel, Publish, QoS,
    RetainHandling, SubAck, SubAckReason, Subscribe, SubscriptionOptions, TopicFilter, TopicName,
    UnsubAck, UnsubAckReason, Unsubscribe, DEFAULT_MAX_PACKET_SIZE,
};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;

use codec_support::{decoder, Receiver};

const CASES: u32 = 256;

// Values.

/// Printable text, including multi-byte characters, that every MQTT string may carry.
fn text() -> impl Strategy<Value = ByteString> {
    "[a-zA-Z0-9 _.:-]{0,12}|[a-z]{0,3}[äöüé€日本]{1,3}".prop_map(ByteString::from)
}

fn binary() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

fn topic_name() -> impl Strategy<Value = TopicName> {
    "[a-z0-9$]{1,6}(/[a-zA-Z0-9 ü]{0,6}){0,3}".prop_map(|name| name.parse().unwrap())
}

fn topic_filter() -> impl Strategy<Value = TopicFilter> {
    let level = prop_oneof![Just("+".to_owned()), "[a-z0-9]{1,5}"];
    let levels = vec(level, 1..4).prop_map(|levels| levels.join("/"));
    (option::of("[a-z]{1,4}"), levels, any::<bool>()).prop_map(|(share, levels, multi)| {
        let mut filter = match share {
            Some(name) => format!("$share/{name}/{levels}"),
            None => levels,
        };
        if multi {
            filter.push_str("/#");
        }
        filter.parse().unwrap()
    })
}

fn packet_id() -> impl Strategy<Value = PacketId> {
    (1..=u16::MAX).prop_map(|id| PacketId::try_from(id).unwrap())
}

fn nonzero_u16() -> impl Strategy<Value = NonZeroU16> {
    (1..=u16::MAX).prop_map(|value| NonZeroU16::new(value).unwrap())
}

fn qos() -> impl Strategy<Value = QoS> {
    select(vec![QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
}

fn user_properties() -> impl Strategy<Value = Vec<(ByteString, ByteString)>> {
    vec((text(), text()), 0..3)
}

// Properties, one strategy per group of packets that allow the same set.

fn connect_properties() -> impl Strategy<Value = Properties> {
    (
        (
            option::of(any::<u32>()),
            option::of(nonzero_u16()),
            option::of(1..=u32::MAX),
        ),
        (
            option::of(any::<u16>()),
            option::of(any::<bool>()),
            option::of(any::<bool>()),
        ),
        (user_properties(), option::of(text()), option::of(binary())),
    )
        .prop_map(
            |(
                (expiry, receive, max_size),
                (alias_max, response, problem),
                (user, method, data),
            )| {
                Properties {
                    session_expiry_interval: expiry,
                    receive_maximum: receive,
                    maximum_packet_size: max_size.and_then(NonZeroU32::new),
                    topic_alias_maximum: alias_max,
                    request_response_information: response,
                    request_problem_information: problem,
                    user_properties: user,
                    // The encoder rejects Authentication Data without Authentication
                    // Method on CONNECT.
                    authentication_data: data.filter(|_| method.is_some()),
                    authentication_method: method,
                    ..Properties::default()
                }
            },
        )
}

/// Properties of a will and of a PUBLISH without topic alias and subscription identifiers.
fn message_properties() -> impl Strategy<Value = Properties> {
    (
        (
            option::of(select(vec![PayloadFormat::Bytes, PayloadFormat::Utf8])),
            option::of(any::<u32>()),
        ),
        (
            option::of(text()),
            option::of(topic_name()),
            option::of(binary()),
        ),
        user_properties(),
    )
        .prop_map(
            |((format, expiry), (content_type, response_topic, correlation), user)| Properties {
                payload_format_indicator: format,
                message_expiry_interval: expiry,
                content_type,
                response_topic,
                correlation_data: correlation,
                user_properties: user,
                ..Properties::default()
            },
        )
}

fn will_properties() -> impl Strategy<Value = Properties> {
    (message_properties(), option::of(any::<u32>())).prop_map(|(properties, delay)| Properties {
        will_delay_interval: delay,
        ..properties
    })
}

fn connack_properties() -> impl Strategy<Value = Properties> {
    (
        (
            option::of(any::<u32>()),
            option::of(nonzero_u16()),
            option::of(select(vec![QoS::AtMostOnce, QoS::AtLeastOnce])),
        ),
        (
            option::of(any::<bool>()),
            option::of(1..=u32::MAX),
            option::of(text()),
            option::of(any::<u16>()),
        ),
        (
            option::of(text()),
            user_properties(),
            option::of(any::<bool>()),
            option::of(any::<bool>()),
        ),
        (
            option::of(any::<bool>()),
            option::of(any::<u16>()),
            option::of(text()),
            option::of(text()),
        ),
        (option::of(text()), option::of(binary())),
    )
        .prop_map(
            |(
                (expiry, receive, max_qos),
                (retain, max_size, assigned, alias_max),
                (reason, user, wildcard, sub_ids),
                (shared, keep_alive, response, reference),
                (method, data),
            )| Properties {
                session_expiry_interval: expiry,
                receive_maximum: receive,
                maximum_qos: max_qos,
                retain_available: retain,
                maximum_packet_size: max_size.and_then(NonZeroU32::new),
                assigned_client_identifier: assigned,
                topic_alias_maximum: alias_max,
                reason_string: reason,
                user_properties: user,
                wildcard_subscription_available: wildcard,
                subscription_identifier_available: sub_ids,
                shared_subscription_available: shared,
                server_keep_alive: keep_alive,
                response_information: response,
                server_reference: reference,
                authentication_method: method,
                authentication_data: data,
                ..Properties::default()
            },
        )
}

/// Reason string and user properties: the set of acknowledgements and AUTH.
fn reason_properties() -> impl Strategy<Value = Properties> {
    (option::of(text()), user_properties()).prop_map(|(reason, user)| Properties {
        reason_string: reason,
        user_properties: user,
        ..Properties::default()
    })
}

fn subscription_identifier() -> impl Strategy<Value = NonZeroU32> {
    (1..=268_435_455_u32).prop_map(|id| NonZeroU32::new(id).unwrap())
}

// Packets.

fn connect(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let v5 = version.is_v5();
    let will = (
        topic_name(),
        binary(),
        qos(),
        any::<bool>(),
        will_properties(),
    )
        .prop_map(move |(topic, payload, qos, retain, properties)| LastWill {
            topic,
            payload,
            qos,
            retain,
            properties: if v5 {
                properties
            } else {
                Properties::default()
            },
        });
    (
        (any::<bool>(), any::<u16>(), "[a-zA-Z0-9-]{0,23}"),
        option::of(will),
        (option::of(text()), option::of(binary())),
        connect_properties(),
    )
        .prop_map(
            move |((clean_start, keep_alive, id), will, (username, password), properties)| {
                // MQTT 3.1 and 3.1.1 allow a password only together with a user name,
                // and an empty client identifier only with clean session.
                let password = if v5 || username.is_some() {
                    password
                } else {
                    None
                };
                let clean_start = clean_start || (!v5 && id.is_empty());
                Packet::Connect(Box::new(Connect {
                    protocol: version,
                    clean_start,
                    keep_alive,
                    client_id: id.parse::<ClientId>().unwrap(),
                    will,
                    username,
                    password,
                    properties: if v5 {
                        properties
                    } else {
                        Properties::default()
                    },
                }))
            },
        )
}

fn connack(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let reasons = if version.is_v5() {
        vec![
            ConnectReason::Success,
            ConnectReason::UnspecifiedError,
            ConnectReason::MalformedPacket,
            ConnectReason::BadAuthenticationMethod,
            ConnectReason::NotAuthorized,
            ConnectReason::ServerMoved,
            ConnectReason::ConnectionRateExceeded,
        ]
    } else {
        vec![
            ConnectReason::Success,
            ConnectReason::UnsupportedProtocolVersion,
            ConnectReason::ClientIdentifierNotValid,
            ConnectReason::ServerUnavailable,
            ConnectReason::BadUserNameOrPassword,
            ConnectReason::NotAuthorized,
        ]
    };
    let v5 = version.is_v5();
    (select(reasons), any::<bool>(), connack_properties()).prop_map(
        move |(reason, session_present, properties)| {
            Packet::ConnAck(ConnAck {
                // A server sets Session Present only when it accepts the connection.
                session_present: session_present && reason == ConnectReason::Success,
                reason,
                properties: if v5 {
                    properties.into()
                } else {
                    Properties::default().into()
                },
            })
        },
    )
}

fn publish(version: ProtocolVersion, receiver: Receiver) -> impl Strategy<Value = Packet> {
    let v5 = version.is_v5();
    let delivery = prop_oneof![
        Just(Delivery::AtMostOnce),
        packet_id().prop_map(Delivery::AtLeastOnce),
        packet_id().prop_map(Delivery::ExactlyOnce),
    ];
    // Only a server adds subscription identifiers to a PUBLISH [MQTT-3.3.4-6].
    let max_ids = if receiver == Receiver::Client { 3 } else { 0 };
    (
        (delivery, any::<bool>(), any::<bool>()),
        (topic_name(), option::of(nonzero_u16()), any::<bool>()),
        (
            message_properties(),
            vec(subscription_identifier(), 0..=max_ids),
        ),
        vec(any::<u8>(), 0..64),
    )
        .prop_map(
            move |(
                (delivery, dup, retain),
                (topic, alias, omit_topic),
                (properties, ids),
                payload,
            )| {
                let properties = if v5 {
                    Properties {
                        topic_alias: alias,
                        subscription_identifiers: ids,
                        ..properties
                    }
                } else {
                    Properties::default()
                };
                // A zero-length topic name needs a Topic Alias [MQTT-3.3.2-8].
                let topic = if omit_topic && properties.topic_alias.is_some() {
                    None
                } else {
                    Some(topic)
                };
                Packet::Publish(Publish {
                    dup: dup && delivery != Delivery::AtMostOnce,
                    delivery,
                    retain,
                    topic,
                    properties: properties.into(),
                    payload: Bytes::from(payload),
                })
            },
        )
}

fn acknowledgement(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let v5 = version.is_v5();
    let pub_reasons = if v5 {
        vec![
            PubAckReason::Success,
            PubAckReason::NoMatchingSubscribers,
            PubAckReason::UnspecifiedError,
            PubAckReason::NotAuthorized,
            PubAckReason::PacketIdentifierInUse,
            PubAckReason::PayloadFormatInvalid,
        ]
    } else {
        vec![PubAckReason::Success]
    };
    let comp_reasons = if v5 {
        vec![
            PubCompReason::Success,
            PubCompReason::PacketIdentifierNotFound,
        ]
    } else {
        vec![PubCompReason::Success]
    };
    let properties =
        reason_properties().prop_map(move |p| if v5 { p } else { Properties::default() });
    (
        0..4_u8,
        packet_id(),
        select(pub_reasons),
        select(comp_reasons),
        properties,
    )
        .prop_map(
            |(kind, packet_id, pub_reason, comp_reason, properties)| match kind {
                0 => Packet::PubAck(PubAck {
                    packet_id,
                    reason: pub_reason,
                    properties: properties.into(),
                }),
                1 => Packet::PubRec(PubRec {
                    packet_id,
                    reason: pub_reason,
                    properties: properties.into(),
                }),
                2 => Packet::PubRel(PubRel {
                    packet_id,
                    reason: comp_reason,
                    properties: properties.into(),
                }),
                _ => Packet::PubComp(PubComp {
                    packet_id,
                    reason: comp_reason,
                    properties: properties.into(),
                }),
            },
        )
}

fn subscribe(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let v5 = version.is_v5();
    let handling = select(vec![
        RetainHandling::SendAtSubscribe,
        RetainHandling::SendAtNewSubscribe,
        RetainHandling::DoNotSend,
    ]);
    let entry = (
        topic_filter(),
        qos(),
        any::<bool>(),
        any::<bool>(),
        handling,
    )
        .prop_map(
            move |(filter, qos, no_local, retain_as_published, retain_handling)| {
                let options = if v5 {
                    SubscriptionOptions {
                        qos,
                        // No Local on a shared subscription is a protocol error [MQTT-3.8.3-4].
                        no_local: no_local && filter.share_name().is_none(),
                        retain_as_published,
                        retain_handling,
                    }
                } else {
                    SubscriptionOptions::with_qos(qos)
                };
                (filter, options)
            },
        );
    let properties =
        (option::of(subscription_identifier()), user_properties()).prop_map(move |(id, user)| {
            if v5 {
                Properties {
                    subscription_identifiers: id.into_iter().collect(),
                    user_properties: user,
                    ..Properties::default()
                }
            } else {
                Properties::default()
            }
        });
    (packet_id(), vec(entry, 1..4), properties).prop_map(|(packet_id, filters, properties)| {
        Packet::Subscribe(Subscribe {
            packet_id,
            filters,
            properties: properties.into(),
        })
    })
}

fn suback(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let v5 = version.is_v5();
    let mut reasons = vec![
        SubAckReason::GrantedQoS0,
        SubAckReason::GrantedQoS1,
        SubAckReason::GrantedQoS2,
        SubAckReason::UnspecifiedError,
    ];
    if v5 {
        reasons.extend([
            SubAckReason::NotAuthorized,
            SubAckReason::TopicFilterInvalid,
            SubAckReason::QuotaExceeded,
            SubAckReason::SharedSubscriptionsNotSupported,
            SubAckReason::WildcardSubscriptionsNotSupported,
        ]);
    }
    let properties =
        reason_properties().prop_map(move |p| if v5 { p } else { Properties::default() });
    (packet_id(), vec(select(reasons), 1..5), properties).prop_map(
        |(packet_id, reasons, properties)| {
            Packet::SubAck(SubAck {
                packet_id,
                reasons,
                properties: properties.into(),
            })
        },
    )
}

fn unsubscribe(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let v5 = version.is_v5();
    (packet_id(), vec(topic_filter(), 1..4), user_properties()).prop_map(
        move |(packet_id, filters, user)| {
            let properties = if v5 {
                Properties {
                    user_properties: user,
                    ..Properties::default()
                }
            } else {
                Properties::default()
            };
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                filters,
                properties: properties.into(),
            })
        },
    )
}

fn unsuback(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let v5 = version.is_v5();
    let reasons = select(vec![
        UnsubAckReason::Success,
        UnsubAckReason::NoSubscriptionExisted,
        UnsubAckReason::UnspecifiedError,
        UnsubAckReason::NotAuthorized,
        UnsubAckReason::TopicFilterInvalid,
    ]);
    (packet_id(), vec(reasons, 1..5), reason_properties()).prop_map(
        move |(packet_id, reasons, properties)| {
            // MQTT 3.1.1 UNSUBACK has no payload and no properties.
            let (reasons, properties) = if v5 {
                (reasons, properties)
            } else {
                (Vec::new(), Properties::default())
            };
            Packet::UnsubAck(UnsubAck {
                packet_id,
                reasons,
                properties: properties.into(),
            })
        },
    )
}

/// DISCONNECT as `receiver` receives it, with reason codes the other side may send.
fn disconnect(version: ProtocolVersion, receiver: Receiver) -> BoxedStrategy<Packet> {
    let normal = Packet::Disconnect(Disconnect {
        reason: DisconnectReason::NormalDisconnection,
        properties: Properties::default().into(),
    });
    if !version.is_v5() {
        return Just(normal).boxed();
    }
    let from_server = vec![
        DisconnectReason::NormalDisconnection,
        DisconnectReason::UnspecifiedError,
        DisconnectReason::ProtocolError,
        DisconnectReason::ServerBusy,
        DisconnectReason::ServerShuttingDown,
        DisconnectReason::KeepAliveTimeout,
        DisconnectReason::SessionTakenOver,
        DisconnectReason::TopicAliasInvalid,
        DisconnectReason::UseAnotherServer,
    ];
    let from_client = vec![
        DisconnectReason::NormalDisconnection,
        DisconnectReason::DisconnectWithWillMessage,
        DisconnectReason::MalformedPacket,
        DisconnectReason::ReceiveMaximumExceeded,
        DisconnectReason::PacketTooLarge,
        DisconnectReason::MessageRateTooHigh,
    ];
    let is_client = receiver == Receiver::Client;
    let reasons = if is_client { from_server } else { from_client };
    (
        select(reasons),
        reason_properties(),
        option::of(any::<u32>()),
        option::of(text()),
    )
        .prop_map(move |(reason, properties, expiry, reference)| {
            // Only a client sends Session Expiry Interval [MQTT-3.14.2-2], and only a server
            // sends Server Reference.
            let properties = if is_client {
                Properties {
                    server_reference: reference,
                    ..properties
                }
            } else {
                Properties {
                    session_expiry_interval: expiry,
                    ..properties
                }
            };
            Packet::Disconnect(Disconnect {
                reason,
                properties: properties.into(),
            })
        })
        .boxed()
}

fn auth(receiver: Receiver) -> impl Strategy<Value = Packet> {
    let mut reasons = vec![AuthReason::Success, AuthReason::ContinueAuthentication];
    if receiver == Receiver::Server {
        reasons.push(AuthReason::ReAuthenticate);
    }
    (
        select(reasons),
        reason_properties(),
        option::of(text()),
        option::of(binary()),
    )
        .prop_map(|(reason, properties, method, data)| {
            Packet::Auth(Auth {
                reason,
                properties: Properties {
                    authentication_method: method,
                    authentication_data: data,
                    ..properties
                }
                .into(),
            })
        })
}

/// Any packet other than CONNECT that `receiver` may decode under `version`.
fn packet(version: ProtocolVersion, receiver: Receiver) -> BoxedStrategy<Packet> {
    let mut kinds: Vec<BoxedStrategy<Packet>> = vec![
        publish(version, receiver).boxed(),
        acknowledgement(version).boxed(),
    ];
    match receiver {
        Receiver::Client => {
            kinds.push(connack(version).boxed());
            kinds.push(suback(version).boxed());
            kinds.push(unsuback(version).boxed());
            kinds.push(Just(Packet::PingResp).boxed());
        }
        Receiver::Server => {
            kinds.push(subscribe(version).boxed());
            kinds.push(unsubscribe(version).boxed());
            kinds.push(Just(Packet::PingReq).boxed());
        }
    }
    // A 3.1.1 server never sends DISCONNECT.
    if version.is_v5() || receiver == Receiver::Server {
        kinds.push(disconnect(version, receiver));
    }
    if version.is_v5() {
        kinds.push(auth(receiver).boxed());
    }
    proptest::strategy::Union::new(kinds).boxed()
}

// Checks.

/// Encodes `packet`, checks `encoded_len`, decodes it with `decoder` and checks that the
/// same packet comes back with no bytes left over.
fn check_round_trip(
    packet: &Packet,
    version: ProtocolVersion,
    decoder: &mut Decoder,
) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::new();
    encode(packet, version, DEFAULT_MAX_PACKET_SIZE, &mut buf)
        .map_err(|error| TestCaseError::fail(format!("encode failed: {error}")))?;
    let expected_len = encoded_len(packet, version)
        .map_err(|error| TestCaseError::fail(format!("encoded_len failed: {error}")))?;
    prop_assert_eq!(
        expected_len,
        buf.len(),
        "encoded_len differs from the bytes written"
    );

    let decoded = decoder
        .decode(&mut buf)
        .map_err(|error| TestCaseError::fail(format!("decode failed: {error}")))?;
    prop_assert_eq!(decoded.as_ref(), Some(packet));
    prop_assert!(buf.is_empty(), "{} bytes left after decoding", buf.len());
    Ok(())
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        ..ProptestConfig::default()
    }
}

macro_rules! round_trip_tests {
    ($($name:ident: $version:expr, $receiver:expr;)+) => {
        $(
            proptest! {
                #![proptest_config(config())]
                #[test]
                fn $name(packet in packet($version, $receiver)) {
                    let mut decoder = decoder($receiver, $version);
                    check_round_trip(&packet, $version, &mut decoder)?;
                }
            }
        )+
    };
}

round_trip_tests! {
    round_trip_3_1_to_client: ProtocolVersion::V3_1, Receiver::Client;
    round_trip_3_1_to_server: ProtocolVersion::V3_1, Receiver::Server;
    round_trip_3_1_1_to_client: ProtocolVersion::V3_1_1, Receiver::Client;
    round_trip_3_1_1_to_server: ProtocolVersion::V3_1_1, Receiver::Server;
    round_trip_5_to_client: ProtocolVersion::V5, Receiver::Client;
    round_trip_5_to_server: ProtocolVersion::V5, Receiver::Server;
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn connect_round_trip(
        (version, packet) in select(codec_support::VERSIONS.to_vec())
            .prop_flat_map(|version| (Just(version), connect(version))),
    ) {
        let mut decoder = Decoder::for_server();
        check_round_trip(&packet, version, &mut decoder)?;
        prop_assert_eq!(decoder.version(), Some(version));
    }

    #[test]
    fn packet_sequence_round_trip(packets in vec(packet(ProtocolVersion::V5, Receiver::Client), 1..8)) {
        let mut buf = BytesMut::new();
        for packet in &packets {
            encode(packet, ProtocolVersion::V5, DEFAULT_MAX_PACKET_SIZE, &mut buf).unwrap();
        }
        let mut decoder = Decoder::for_client(ProtocolVersion::V5);
        let mut decoded = Vec::new();
        while let Some(packet) = decoder.decode(&mut buf).unwrap() {
            decoded.push(packet);
        }
        prop_assert_eq!(decoded, packets);
        prop_assert!(buf.is_empty());
    }
}
