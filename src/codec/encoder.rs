//! The encoder: turns a [`Packet`] into bytes for one protocol version.
//!
//! Encoding is two passes over the packet. The first checks everything the version
//! and the protocol require and computes the exact size. Only then is `dst` grown
//! once and written, so a rejected packet leaves `dst` untouched. CONNECT, whose many
//! strings made the checking pass cost more than the writing, checks the characters
//! of its strings while writing them instead (see `connect_wire::encode_connect`).
//! Packet layouts live in the `*_wire` modules; this module contains the dispatch
//! and the fixed header.

use bytes::{BufMut, BytesMut};

use super::connect_wire::{
    encode_connect, measure_connack, measure_connect, put_connack, put_connect,
};
use super::control_wire::{measure_auth, measure_disconnect, put_auth, put_disconnect};
use super::error::EncodeError;
use super::packet::{
    Auth, ConnAck, Connect, Disconnect, Packet, PacketType, PubAck, PubComp, PubRec, PubRel,
    Publish, SubAck, Subscribe, UnsubAck, Unsubscribe,
};
use super::publish_wire::{
    encode_simple_publish, is_simple_publish, measure_acknowledgement, measure_publish,
    put_acknowledgement, put_publish, Acknowledgement,
};
use super::subscribe_wire::{
    measure_suback, measure_subscribe, measure_unsuback, measure_unsubscribe, put_suback,
    put_subscribe, put_unsuback, put_unsubscribe,
};
use super::types::{disallowed_character, PacketId, ProtocolVersion};
use super::wire::{put_variable_byte_integer, MAX_VARIABLE_BYTE_INTEGER};

/// Sizes found by the checking pass and reused by the writing pass.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Sizes {
    /// Remaining length: everything after the fixed header.
    pub(crate) remaining: usize,
    /// Length of the packet's property list, without its length prefix.
    pub(crate) properties: usize,
    /// Length of the will property list of a CONNECT, without its length prefix.
    pub(crate) will_properties: usize,
}

impl Sizes {
    /// Returns the sizes of a packet with one property list of `properties` bytes.
    pub(crate) fn new(remaining: usize, properties: usize) -> Self {
        Self {
            remaining,
            properties,
            will_properties: 0,
        }
    }
}

/// Encodes `packet` for `version` at the end of `dst`.
///
/// Fails without writing anything when the packet cannot be sent in `version`, breaks
/// a protocol rule, or would be larger than `max_packet_size` bytes in total (fixed
/// header included), which is the limit the peer announced.
pub fn encode(
    packet: &Packet,
    version: ProtocolVersion,
    max_packet_size: u32,
    dst: &mut BytesMut,
) -> Result<(), EncodeError> {
    match packet {
        // Most messages take this path, which the compiler inlines whole.
        Packet::Publish(publish) if is_simple_publish(publish) => {
            encode_simple_publish(publish, version, max_packet_size, dst)
        }
        // Most acknowledgements are Success without properties: four bytes.
        _ if max_packet_size >= SHORT_ACK_LEN => match short_ack_first_byte(packet) {
            Some((first_byte, packet_id)) => {
                let [high, low] = packet_id.get().to_be_bytes();
                dst.put_slice(&[first_byte, 2, high, low]);
                Ok(())
            }
            None => encode_other(packet, version, max_packet_size, dst),
        },
        _ => encode_other(packet, version, max_packet_size, dst),
    }
}

/// Size of PUBACK, PUBREC, PUBREL or PUBCOMP in the short form.
const SHORT_ACK_LEN: u32 = 4;

/// Returns the first byte and the packet identifier of PUBACK, PUBREC, PUBREL or
/// PUBCOMP when the short form encodes it.
#[inline]
fn short_ack_first_byte(packet: &Packet) -> Option<(u8, PacketId)> {
    let packet_id = match packet {
        Packet::PubAck(ack) => ack.short_form(),
        Packet::PubRec(ack) => ack.short_form(),
        Packet::PubRel(ack) => ack.short_form(),
        Packet::PubComp(ack) => ack.short_form(),
        _ => None,
    }?;
    Some((first_byte(packet), packet_id))
}

/// Encodes every packet but the common PUBLISH. Out of line, it leaves `encode` with
/// the PUBLISH path alone, which the compiler then writes with the fewest
/// instructions.
#[inline(never)]
fn encode_other(
    packet: &Packet,
    version: ProtocolVersion,
    max_packet_size: u32,
    dst: &mut BytesMut,
) -> Result<(), EncodeError> {
    if let Packet::Connect(connect) = packet {
        return encode_connect(connect, version, max_packet_size, dst);
    }
    let body = body(packet);
    let sizes = body.measure(version)?;
    write_packet(first_byte(packet), &sizes, max_packet_size, dst, |dst| {
        body.put(version, &sizes, dst);
    })
}

/// Checks the size limit, then appends the fixed header and, through `put_body`, the
/// rest of the packet.
#[inline]
pub(crate) fn write_packet(
    first_byte: u8,
    sizes: &Sizes,
    max_packet_size: u32,
    dst: &mut BytesMut,
    put_body: impl FnOnce(&mut BytesMut),
) -> Result<(), EncodeError> {
    let total = checked_total(sizes.remaining, max_packet_size)?;
    dst.reserve(total);
    // A remaining length below 128 is one byte, and one write for both bytes saves
    // a capacity check.
    if sizes.remaining < 128 {
        dst.put_slice(&[first_byte, sizes.remaining as u8]);
    } else {
        dst.put_u8(first_byte);
        put_variable_byte_integer(dst, sizes.remaining as u32);
    }
    put_body(dst);
    Ok(())
}

/// Returns the total encoded size of `packet` in bytes, fixed header included, after
/// the same checks as [`encode`] except the size limit.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> Result<usize, EncodeError> {
    let sizes = body(packet).measure(version)?;
    Ok(total_len(sizes.remaining))
}

fn total_len(remaining: usize) -> usize {
    // A length above the Variable Byte Integer range counts as four bytes, because
    // the error for it reports a size.
    let remaining_len = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    1 + remaining_len + remaining
}

/// Returns the total size, or the error for a packet above `max` or above what a
/// remaining length can express.
pub(crate) fn checked_total(remaining: usize, max: u32) -> Result<usize, EncodeError> {
    let size = total_len(remaining);
    if size <= max as usize && remaining <= MAX_VARIABLE_BYTE_INTEGER as usize {
        return Ok(size);
    }
    let protocol_max = total_len(MAX_VARIABLE_BYTE_INTEGER as usize);
    Err(EncodeError::PacketTooLarge {
        size,
        max: (max as usize).min(protocol_max) as u32,
    })
}

/// Returns the first byte of the fixed header: packet type and flags (section 2.1.3).
fn first_byte(packet: &Packet) -> u8 {
    let flags = match packet {
        Packet::Publish(publish) => {
            u8::from(publish.dup) << 3
                | publish.delivery.qos().level() << 1
                | u8::from(publish.retain)
        }
        Packet::PubRel(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_) => 0b0010,
        _ => 0,
    };
    (packet.packet_type() as u8) << 4 | flags
}

/// Returns the first byte of the fixed header of a packet type with no flags.
pub(crate) fn first_byte_of(packet_type: PacketType) -> u8 {
    (packet_type as u8) << 4
}

/// The part of a packet after the fixed header, as each packet type lays it out.
pub(crate) trait WireBody {
    /// Checks the packet for `version` and returns its sizes.
    fn measure(&self, version: ProtocolVersion) -> Result<Sizes, EncodeError>;

    /// Appends the body; `sizes` come from [`WireBody::measure`] for the same version.
    fn put(&self, version: ProtocolVersion, sizes: &Sizes, dst: &mut BytesMut);
}

/// PINGREQ and PINGRESP: no body at all.
struct EmptyBody;

impl WireBody for EmptyBody {
    fn measure(&self, _version: ProtocolVersion) -> Result<Sizes, EncodeError> {
        Ok(Sizes::default())
    }

    fn put(&self, _version: ProtocolVersion, _sizes: &Sizes, _dst: &mut BytesMut) {}
}

/// Implements [`WireBody`] for packet types with their `measure` and `put` functions.
macro_rules! impl_wire_body {
    ($($packet:ty => $measure:path, $put:path;)+) => {$(
        impl WireBody for $packet {
            #[inline]
            fn measure(&self, version: ProtocolVersion) -> Result<Sizes, EncodeError> {
                $measure(self, version)
            }

            #[inline]
            fn put(&self, version: ProtocolVersion, sizes: &Sizes, dst: &mut BytesMut) {
                $put(self, version, sizes, dst);
            }
        }
    )+};
}

impl_wire_body! {
    Connect => measure_connect, put_connect;
    ConnAck => measure_connack, put_connack;
    Publish => measure_publish, put_publish;
    PubAck => measure_acknowledgement, put_acknowledgement;
    PubRec => measure_acknowledgement, put_acknowledgement;
    PubRel => measure_acknowledgement, put_acknowledgement;
    PubComp => measure_acknowledgement, put_acknowledgement;
    Subscribe => measure_subscribe, put_subscribe;
    SubAck => measure_suback, put_suback;
    Unsubscribe => measure_unsubscribe, put_unsubscribe;
    UnsubAck => measure_unsuback, put_unsuback;
    Disconnect => measure_disconnect, put_disconnect;
    Auth => measure_auth, put_auth;
}

fn body(packet: &Packet) -> &dyn WireBody {
    match packet {
        Packet::Connect(connect) => &**connect,
        Packet::ConnAck(connack) => connack,
        Packet::Publish(publish) => publish,
        Packet::PubAck(ack) => ack,
        Packet::PubRec(ack) => ack,
        Packet::PubRel(ack) => ack,
        Packet::PubComp(ack) => ack,
        Packet::Subscribe(subscribe) => subscribe,
        Packet::SubAck(suback) => suback,
        Packet::Unsubscribe(unsubscribe) => unsubscribe,
        Packet::UnsubAck(unsuback) => unsuback,
        Packet::PingReq | Packet::PingResp => &EmptyBody,
        Packet::Disconnect(disconnect) => disconnect,
        Packet::Auth(auth) => auth,
    }
}

/// Checks a string field the model stores unchecked (user name and the like) and
/// returns its encoded size, length prefix included.
pub(crate) fn string_field_len(field: &'static str, value: &str) -> Result<usize, EncodeError> {
    if let Some(character) = disallowed_character(value) {
        return Err(EncodeError::DisallowedCharacter { field, character });
    }
    binary_field_len(field, value.as_bytes())
}

/// Checks that a binary field fits its two-byte length prefix and returns its encoded
/// size, length prefix included.
pub(crate) fn binary_field_len(field: &'static str, value: &[u8]) -> Result<usize, EncodeError> {
    if value.len() > usize::from(u16::MAX) {
        return Err(EncodeError::FieldTooLong {
            field,
            len: value.len(),
        });
    }
    Ok(2 + value.len())
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::too_many_lines
)]
mod tests {
    use std::num::{NonZeroU16, NonZeroU32};

    use bytes::Bytes;

    use super::*;
    use crate::codec::decoder::Decoder;
    use crate::codec::packet::{Delivery, LastWill};
    use crate::codec::properties::{BoxedProperties, PayloadFormat, Properties};
    use crate::codec::reason::{
        AuthReason, ConnectReason, DisconnectReason, PubAckReason, PubCompReason, SubAckReason,
        UnsubAckReason,
    };
    use crate::codec::types::{ClientId, PacketId, QoS, RetainHandling, SubscriptionOptions};

    fn id(value: u16) -> PacketId {
        PacketId::try_from(value).unwrap()
    }

    fn encode_to_vec(packet: &Packet, version: ProtocolVersion) -> Result<Vec<u8>, EncodeError> {
        let mut dst = BytesMut::new();
        encode(packet, version, u32::MAX, &mut dst)?;
        Ok(dst.to_vec())
    }

    /// The short form of the four acknowledgements writes what the general encoder
    /// writes, and the general encoder still handles every other reason, properties
    /// and a size limit below four bytes.
    #[test]
    fn short_acknowledgements_match_general_encoder() {
        let with_property = || {
            Properties {
                reason_string: Some("r".into()),
                ..Properties::default()
            }
            .into()
        };
        let packets = |properties: fn() -> BoxedProperties| {
            [
                Packet::PubAck(PubAck {
                    packet_id: id(0x1234),
                    reason: PubAckReason::Success,
                    properties: properties(),
                }),
                Packet::PubRec(PubRec {
                    packet_id: id(1),
                    reason: PubAckReason::Success,
                    properties: properties(),
                }),
                Packet::PubRel(PubRel {
                    packet_id: id(0xFFFF),
                    reason: PubCompReason::Success,
                    properties: properties(),
                }),
                Packet::PubComp(PubComp {
                    packet_id: id(7),
                    reason: PubCompReason::Success,
                    properties: properties(),
                }),
            ]
        };
        for version in [
            ProtocolVersion::V3_1,
            ProtocolVersion::V3_1_1,
            ProtocolVersion::V5,
        ] {
            for packet in packets(BoxedProperties::default) {
                let mut general = BytesMut::new();
                encode_other(&packet, version, u32::MAX, &mut general).unwrap();
                assert_eq!(general.len(), 4, "{packet:?}");
                assert_eq!(encode_to_vec(&packet, version).unwrap(), general.to_vec());
                let mut dst = BytesMut::new();
                assert!(matches!(
                    encode(&packet, version, 3, &mut dst),
                    Err(EncodeError::PacketTooLarge { .. })
                ));
                assert!(dst.is_empty());
            }
        }
        for packet in packets(with_property) {
            let encoded = encode_to_vec(&packet, ProtocolVersion::V5).unwrap();
            assert!(encoded.len() > 4, "{packet:?}");
        }
        let rejected = Packet::PubAck(PubAck {
            packet_id: id(1),
            reason: PubAckReason::NotAuthorized,
            properties: BoxedProperties::default(),
        });
        assert_eq!(
            encode_to_vec(&rejected, ProtocolVersion::V5).unwrap(),
            [0x40, 3, 0, 1, 0x87]
        );
    }

    /// Returns `true` for the packets a client sends, which a server decoder reads.
    fn sent_by_client(packet: &Packet) -> bool {
        matches!(
            packet,
            Packet::Connect(_)
                | Packet::Subscribe(_)
                | Packet::Unsubscribe(_)
                | Packet::PingReq
                | Packet::Disconnect(_)
        )
    }

    fn round_trip(packet: &Packet, version: ProtocolVersion) {
        let bytes = encode_to_vec(packet, version).unwrap();
        assert_eq!(
            encoded_len(packet, version).unwrap(),
            bytes.len(),
            "{packet:?}"
        );
        let mut decoder = if sent_by_client(packet) {
            let mut decoder = Decoder::for_server();
            decoder.set_version(version);
            decoder
        } else {
            Decoder::for_client(version)
        };
        let mut buf = BytesMut::from(&bytes[..]);
        let parsed = decoder.decode(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty(), "{packet:?}");
        assert_eq!(&parsed, packet, "{version:?} bytes {bytes:02x?}");
    }

    fn publish(delivery: Delivery, properties: Properties) -> Packet {
        Packet::Publish(Publish {
            dup: delivery != Delivery::AtMostOnce,
            delivery,
            retain: true,
            topic: Some("a/b".parse().unwrap()),
            properties: properties.into(),
            payload: Bytes::from_static(b"payload"),
        })
    }

    fn connect(
        version: ProtocolVersion,
        properties: Properties,
        will_properties: Properties,
    ) -> Packet {
        Packet::Connect(Box::new(Connect {
            protocol: version,
            clean_start: true,
            keep_alive: 30,
            client_id: "client".parse::<ClientId>().unwrap(),
            will: Some(LastWill {
                topic: "will/topic".parse().unwrap(),
                payload: Bytes::from_static(b"gone"),
                qos: QoS::ExactlyOnce,
                retain: true,
                properties: will_properties,
            }),
            username: Some("user".into()),
            password: Some(Bytes::from_static(b"secret")),
            properties,
        }))
    }

    /// One packet of every type, valid in every version.
    fn packets_for_every_version(version: ProtocolVersion) -> Vec<Packet> {
        let none = Properties::default;
        vec![
            connect(version, none(), none()),
            Packet::ConnAck(ConnAck {
                session_present: true,
                reason: ConnectReason::Success,
                properties: none().into(),
            }),
            Packet::ConnAck(ConnAck {
                session_present: false,
                reason: ConnectReason::BadUserNameOrPassword,
                properties: none().into(),
            }),
            publish(Delivery::AtMostOnce, none()),
            publish(Delivery::AtLeastOnce(id(1)), none()),
            publish(Delivery::ExactlyOnce(id(65_535)), none()),
            Packet::PubAck(PubAck {
                packet_id: id(2),
                reason: PubAckReason::Success,
                properties: none().into(),
            }),
            Packet::PubRec(PubRec {
                packet_id: id(3),
                reason: PubAckReason::Success,
                properties: none().into(),
            }),
            Packet::PubRel(PubRel {
                packet_id: id(4),
                reason: PubCompReason::Success,
                properties: none().into(),
            }),
            Packet::PubComp(PubComp {
                packet_id: id(5),
                reason: PubCompReason::Success,
                properties: none().into(),
            }),
            Packet::Subscribe(Subscribe {
                packet_id: id(6),
                filters: vec![
                    (
                        "a/+".parse().unwrap(),
                        SubscriptionOptions::with_qos(QoS::AtLeastOnce),
                    ),
                    (
                        "$share/g/b/#".parse().unwrap(),
                        SubscriptionOptions::with_qos(QoS::ExactlyOnce),
                    ),
                ],
                properties: none().into(),
            }),
            Packet::SubAck(SubAck {
                packet_id: id(6),
                reasons: vec![SubAckReason::GrantedQoS1, SubAckReason::UnspecifiedError],
                properties: none().into(),
            }),
            Packet::Unsubscribe(Unsubscribe {
                packet_id: id(7),
                filters: vec!["a/+".parse().unwrap()],
                properties: none().into(),
            }),
            Packet::PingReq,
            Packet::PingResp,
            Packet::Disconnect(Disconnect {
                reason: DisconnectReason::NormalDisconnection,
                properties: none().into(),
            }),
        ]
    }

    fn report(reason: &str) -> Properties {
        Properties {
            reason_string: Some(reason.into()),
            user_properties: vec![("k".into(), "v".into()), ("k".into(), "".into())],
            ..Properties::default()
        }
    }

    /// Packets only MQTT 5.0 can carry: properties, failure codes, AUTH.
    fn packets_for_v5() -> Vec<Packet> {
        let message = Properties {
            payload_format_indicator: Some(PayloadFormat::Utf8),
            message_expiry_interval: Some(u32::MAX),
            content_type: Some("text/plain".into()),
            response_topic: Some("response/topic".parse().unwrap()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            user_properties: vec![("key".into(), "value".into())],
            ..Properties::default()
        };
        let connect_properties = Properties {
            session_expiry_interval: Some(3600),
            receive_maximum: NonZeroU16::new(20),
            maximum_packet_size: NonZeroU32::new(1024),
            topic_alias_maximum: Some(10),
            request_response_information: Some(true),
            request_problem_information: Some(false),
            authentication_method: Some("SCRAM".into()),
            authentication_data: Some(Bytes::from_static(b"data")),
            ..Properties::default()
        };
        let will_properties = Properties {
            will_delay_interval: Some(5),
            ..message.clone()
        };
        let connack_properties = Properties {
            session_expiry_interval: Some(0),
            assigned_client_identifier: Some("assigned".into()),
            server_keep_alive: Some(10),
            response_information: Some("info".into()),
            server_reference: Some("other:1883".into()),
            receive_maximum: NonZeroU16::new(1),
            topic_alias_maximum: Some(0),
            maximum_qos: Some(QoS::AtMostOnce),
            retain_available: Some(false),
            maximum_packet_size: NonZeroU32::new(u32::MAX),
            wildcard_subscription_available: Some(true),
            subscription_identifier_available: Some(false),
            shared_subscription_available: Some(true),
            ..report("welcome")
        };
        let publish_properties = Properties {
            subscription_identifiers: [1, 268_435_455]
                .into_iter()
                .filter_map(NonZeroU32::new)
                .collect(),
            topic_alias: NonZeroU16::new(3),
            ..message
        };
        vec![
            connect(ProtocolVersion::V5, connect_properties, will_properties),
            Packet::ConnAck(ConnAck {
                session_present: false,
                reason: ConnectReason::QuotaExceeded,
                properties: connack_properties.into(),
            }),
            publish(Delivery::AtLeastOnce(id(9)), publish_properties),
            Packet::Publish(Publish {
                dup: false,
                delivery: Delivery::AtMostOnce,
                retain: false,
                topic: None,
                properties: Properties {
                    topic_alias: NonZeroU16::new(3),
                    ..Properties::default()
                }
                .into(),
                payload: Bytes::new(),
            }),
            Packet::PubAck(PubAck {
                packet_id: id(2),
                reason: PubAckReason::NoMatchingSubscribers,
                properties: Properties::default().into(),
            }),
            Packet::PubRec(PubRec {
                packet_id: id(3),
                reason: PubAckReason::Success,
                properties: report("stored").into(),
            }),
            Packet::PubRel(PubRel {
                packet_id: id(4),
                reason: PubCompReason::PacketIdentifierNotFound,
                properties: report("unknown").into(),
            }),
            Packet::Subscribe(Subscribe {
                packet_id: id(6),
                filters: vec![(
                    "a/#".parse().unwrap(),
                    SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        no_local: true,
                        retain_as_published: true,
                        retain_handling: RetainHandling::DoNotSend,
                    },
                )],
                properties: Properties {
                    subscription_identifiers: NonZeroU32::new(268_435_455).into_iter().collect(),
                    ..Properties::default()
                }
                .into(),
            }),
            Packet::SubAck(SubAck {
                packet_id: id(6),
                reasons: vec![SubAckReason::WildcardSubscriptionsNotSupported],
                properties: report("no").into(),
            }),
            Packet::UnsubAck(UnsubAck {
                packet_id: id(7),
                reasons: vec![
                    UnsubAckReason::Success,
                    UnsubAckReason::NoSubscriptionExisted,
                ],
                properties: report("done").into(),
            }),
            Packet::Disconnect(Disconnect {
                reason: DisconnectReason::DisconnectWithWillMessage,
                properties: Properties {
                    session_expiry_interval: Some(60),
                    ..report("bye")
                }
                .into(),
            }),
            Packet::Auth(Auth {
                reason: AuthReason::ContinueAuthentication,
                properties: Properties {
                    authentication_method: Some("SCRAM".into()),
                    authentication_data: Some(Bytes::from_static(b"step")),
                    ..Properties::default()
                }
                .into(),
            }),
            Packet::Auth(Auth {
                reason: AuthReason::Success,
                properties: Properties::default().into(),
            }),
        ]
    }

    #[test]
    fn every_packet_round_trips_in_every_version() {
        for version in [
            ProtocolVersion::V3_1,
            ProtocolVersion::V3_1_1,
            ProtocolVersion::V5,
        ] {
            for packet in packets_for_every_version(version) {
                round_trip(&packet, version);
            }
        }
        for packet in packets_for_v5() {
            round_trip(&packet, ProtocolVersion::V5);
        }
    }

    #[test]
    fn v3_unsuback_round_trips_without_codes() {
        let packet = Packet::UnsubAck(UnsubAck {
            packet_id: id(7),
            reasons: Vec::new(),
            properties: Properties::default().into(),
        });
        round_trip(&packet, ProtocolVersion::V3_1_1);
        assert_eq!(
            encode_to_vec(&packet, ProtocolVersion::V3_1_1).unwrap(),
            [0xB0, 0x02, 0x00, 0x07]
        );
    }

    #[test]
    fn connect_v3_1_1_minimal_bytes() {
        let packet = Packet::Connect(Box::new(Connect {
            protocol: ProtocolVersion::V3_1_1,
            clean_start: true,
            keep_alive: 60,
            client_id: "c".parse().unwrap(),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        }));
        let expected = [
            0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x01,
            b'c',
        ];
        assert_eq!(
            encode_to_vec(&packet, ProtocolVersion::V3_1_1).unwrap(),
            expected
        );
    }

    #[test]
    fn acknowledgements_use_shortest_v5_form() {
        let mut puback = PubAck {
            packet_id: id(1),
            reason: PubAckReason::Success,
            properties: Properties::default().into(),
        };
        let v5 = ProtocolVersion::V5;
        assert_eq!(
            encode_to_vec(&Packet::PubAck(puback.clone()), v5).unwrap(),
            [0x40, 0x02, 0x00, 0x01]
        );
        puback.reason = PubAckReason::NoMatchingSubscribers;
        assert_eq!(
            encode_to_vec(&Packet::PubAck(puback), v5).unwrap(),
            [0x40, 0x03, 0x00, 0x01, 0x10]
        );
        let pubrel = Packet::PubRel(PubRel {
            packet_id: id(1),
            reason: PubCompReason::Success,
            properties: Properties::default().into(),
        });
        assert_eq!(
            encode_to_vec(&pubrel, v5).unwrap(),
            [0x62, 0x02, 0x00, 0x01]
        );
        let disconnect = Packet::Disconnect(Disconnect {
            reason: DisconnectReason::NormalDisconnection,
            properties: Properties::default().into(),
        });
        assert_eq!(encode_to_vec(&disconnect, v5).unwrap(), [0xE0, 0x00]);
        let protocol_error = Packet::Disconnect(Disconnect {
            reason: DisconnectReason::ProtocolError,
            properties: Properties::default().into(),
        });
        assert_eq!(
            encode_to_vec(&protocol_error, v5).unwrap(),
            [0xE0, 0x01, 0x82]
        );
        round_trip(&protocol_error, v5);
    }

    #[test]
    fn publish_header_flags_encoded() {
        let bytes = encode_to_vec(
            &publish(Delivery::ExactlyOnce(id(1)), Properties::default()),
            ProtocolVersion::V3_1_1,
        );
        // DUP, QoS 2 and RETAIN: 0b0011_1101.
        assert_eq!(bytes.unwrap()[0], 0x3D);
    }

    #[test]
    fn too_large_packet_writes_nothing() {
        let packet = publish(Delivery::AtMostOnce, Properties::default());
        let size = encoded_len(&packet, ProtocolVersion::V3_1_1).unwrap();
        let mut dst = BytesMut::from(&b"before"[..]);
        let max = u32::try_from(size - 1).unwrap();
        let result = encode(&packet, ProtocolVersion::V3_1_1, max, &mut dst);
        assert_eq!(result, Err(EncodeError::PacketTooLarge { size, max }));
        assert_eq!(&dst[..], b"before");
        assert!(encode(&packet, ProtocolVersion::V3_1_1, max + 1, &mut dst).is_ok());
    }

    #[test]
    fn v3_rejects_what_it_cannot_carry() {
        let v3 = ProtocolVersion::V3_1_1;
        let with_properties = publish(Delivery::AtMostOnce, report("x"));
        assert!(matches!(
            encode_to_vec(&with_properties, v3),
            Err(EncodeError::NotInVersion { .. })
        ));
        for packet in packets_for_v5() {
            let result = encode_to_vec(&packet, v3);
            assert!(
                result.is_err(),
                "{packet:?} encoded in 3.1.1 as {result:02x?}"
            );
        }
    }

    #[test]
    fn v3_password_without_username_rejected() {
        let Packet::Connect(mut connect) = connect(
            ProtocolVersion::V3_1_1,
            Properties::default(),
            Properties::default(),
        ) else {
            panic!("expected CONNECT");
        };
        connect.username = None;
        let packet = Packet::Connect(connect.clone());
        assert!(matches!(
            encode_to_vec(&packet, ProtocolVersion::V3_1_1),
            Err(EncodeError::NotInVersion { .. })
        ));
        connect.protocol = ProtocolVersion::V5;
        round_trip(&Packet::Connect(connect), ProtocolVersion::V5);
    }

    #[test]
    fn invalid_combinations_rejected() {
        let v5 = ProtocolVersion::V5;
        let empty_subscribe = Packet::Subscribe(Subscribe {
            packet_id: id(1),
            filters: Vec::new(),
            properties: Properties::default().into(),
        });
        assert!(matches!(
            encode_to_vec(&empty_subscribe, v5),
            Err(EncodeError::InvalidPacket(_))
        ));
        let mut no_topic = publish(Delivery::AtMostOnce, Properties::default());
        if let Packet::Publish(publish) = &mut no_topic {
            publish.topic = None;
        }
        assert!(matches!(
            encode_to_vec(&no_topic, v5),
            Err(EncodeError::InvalidPacket(_))
        ));
        let mut dup_qos0 = publish(Delivery::AtMostOnce, Properties::default());
        if let Packet::Publish(publish) = &mut dup_qos0 {
            publish.dup = true;
        }
        assert!(matches!(
            encode_to_vec(&dup_qos0, v5),
            Err(EncodeError::InvalidPacket(_))
        ));
        let refused_with_session = Packet::ConnAck(ConnAck {
            session_present: true,
            reason: ConnectReason::NotAuthorized,
            properties: Properties::default().into(),
        });
        assert!(matches!(
            encode_to_vec(&refused_with_session, v5),
            Err(EncodeError::InvalidPacket(_))
        ));
    }

    #[test]
    fn user_property_with_control_character_rejected() {
        let properties = Properties {
            user_properties: vec![("name".into(), "line\nbreak".into())],
            ..Properties::default()
        };
        let packet = publish(Delivery::AtMostOnce, properties);
        let result = encode_to_vec(&packet, ProtocolVersion::V5);
        assert!(
            matches!(result, Err(EncodeError::InvalidProperty { .. })),
            "{result:?}"
        );
    }

    fn connect_packet(mut edit: impl FnMut(&mut Connect)) -> Packet {
        let Packet::Connect(mut connect) = connect(
            ProtocolVersion::V5,
            Properties::default(),
            Properties::default(),
        ) else {
            panic!("expected CONNECT");
        };
        edit(&mut connect);
        Packet::Connect(connect)
    }

    /// Encodes a CONNECT with the two passes every other packet takes, which check
    /// every string in the first pass.
    fn encode_connect_in_two_passes(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
        let Packet::Connect(connect) = packet else {
            panic!("expected CONNECT");
        };
        let sizes = measure_connect(connect, version).unwrap();
        let mut dst = BytesMut::new();
        write_packet(first_byte(packet), &sizes, u32::MAX, &mut dst, |dst| {
            put_connect(connect, version, &sizes, dst);
        })
        .unwrap();
        dst.to_vec()
    }

    #[test]
    fn v3_empty_client_id_needs_clean_session() {
        for version in [ProtocolVersion::V3_1, ProtocolVersion::V3_1_1] {
            let packet = connect_packet(|connect| {
                connect.protocol = version;
                connect.client_id = "".parse().unwrap();
                connect.clean_start = false;
                connect.will.as_mut().unwrap().properties = Properties::default();
            });
            let mut dst = BytesMut::from(&b"before"[..]);
            let result = encode(&packet, version, u32::MAX, &mut dst);
            assert_eq!(
                result,
                Err(EncodeError::NotInVersion {
                    what: "an empty client identifier without clean session",
                    version,
                }),
                "{version:?}"
            );
            assert_eq!(&dst[..], b"before");
            assert!(encoded_len(&packet, version).is_err());
        }
        let clean = connect_packet(|connect| {
            connect.protocol = ProtocolVersion::V3_1_1;
            connect.client_id = "".parse().unwrap();
            connect.clean_start = true;
        });
        round_trip(&clean, ProtocolVersion::V3_1_1);
    }

    #[test]
    fn v5_empty_client_id_without_clean_start_encodes() {
        let packet = connect_packet(|connect| {
            connect.client_id = "".parse().unwrap();
            connect.clean_start = false;
        });
        round_trip(&packet, ProtocolVersion::V5);
    }

    #[test]
    fn authentication_data_without_method_rejected() {
        let packet = connect_packet(|connect| {
            connect.properties.authentication_data = Some(Bytes::from_static(b"data"));
        });
        let mut dst = BytesMut::from(&b"before"[..]);
        let result = encode(&packet, ProtocolVersion::V5, u32::MAX, &mut dst);
        assert_eq!(
            result,
            Err(EncodeError::InvalidProperty {
                packet_type: PacketType::Connect,
                property: crate::codec::properties::PropertyId::AuthenticationData,
                problem: "authentication data requires an authentication method",
            })
        );
        assert_eq!(&dst[..], b"before");
        assert!(encoded_len(&packet, ProtocolVersion::V5).is_err());

        let with_method = connect_packet(|connect| {
            connect.properties.authentication_method = Some("SCRAM-SHA-1".into());
            connect.properties.authentication_data = Some(Bytes::from_static(b"data"));
        });
        round_trip(&with_method, ProtocolVersion::V5);
    }

    /// Strings of every length up to 40 bytes, so that the one-pass CONNECT writer
    /// takes each of its ways to copy and test a string.
    fn strings_of_every_length(character: char) -> Vec<String> {
        (0..=40)
            .map(|len| {
                let mut text: String = "abcdefghijklmnopqrstuvwxyz0123456789ABCDE"
                    .chars()
                    .take(len)
                    .collect();
                if len > 0 {
                    text.pop();
                    text.push(character);
                }
                text
            })
            .collect()
    }

    #[test]
    fn connect_matches_two_pass_encoding() {
        for character in ['z', '\u{e9}', '\u{1F600}'] {
            let texts = strings_of_every_length(character);
            let user_properties: Vec<_> = texts
                .iter()
                .zip(texts.iter().rev())
                .map(|(name, value)| (name.as_str().into(), value.as_str().into()))
                .collect();
            let packet = connect_packet(|connect| {
                connect.client_id = "client-with-a-longer-id".parse().unwrap();
                connect.username = Some(texts[17].as_str().into());
                connect.properties.user_properties = user_properties.clone();
                connect.properties.authentication_method = Some(texts[13].as_str().into());
                connect.properties.authentication_data = Some(Bytes::from(texts[23].clone()));
                let will = connect.will.as_mut().unwrap();
                will.properties.content_type = Some(texts[3].as_str().into());
                will.properties.correlation_data = Some(Bytes::from(texts[31].clone()));
                will.properties.user_properties = user_properties.clone();
            });
            let bytes = encode_to_vec(&packet, ProtocolVersion::V5).unwrap();
            assert_eq!(
                bytes,
                encode_connect_in_two_passes(&packet, ProtocolVersion::V5),
                "strings ending in {character:?}"
            );
            round_trip(&packet, ProtocolVersion::V5);
        }
    }

    #[test]
    fn connect_string_with_disallowed_character_rejected() {
        for bad in ['\0', '\n', '\u{7f}', '\u{9f}', '\u{FDD0}', '\u{FFFF}'] {
            for text in strings_of_every_length(bad).into_iter().skip(1) {
                let in_user_property = connect_packet(|connect| {
                    connect.properties.user_properties =
                        vec![("name".into(), text.as_str().into())];
                });
                let mut dst = BytesMut::from(&b"before"[..]);
                let result = encode(&in_user_property, ProtocolVersion::V5, u32::MAX, &mut dst);
                assert!(
                    matches!(result, Err(EncodeError::InvalidProperty { .. })),
                    "{text:?}: {result:?}"
                );
                assert_eq!(&dst[..], b"before", "{text:?}");

                let in_user_name = connect_packet(|connect| {
                    connect.username = Some(text.as_str().into());
                });
                let result = encode(&in_user_name, ProtocolVersion::V5, u32::MAX, &mut dst);
                assert_eq!(
                    result,
                    Err(EncodeError::DisallowedCharacter {
                        field: "user name",
                        character: bad,
                    }),
                    "{text:?}"
                );
                assert_eq!(&dst[..], b"before", "{text:?}");
            }
        }
    }

    #[test]
    fn connect_character_error_comes_before_size_error() {
        let packet = connect_packet(|connect| {
            connect.username = Some("line\nbreak".into());
        });
        let mut dst = BytesMut::new();
        let result = encode(&packet, ProtocolVersion::V5, 10, &mut dst);
        assert!(
            matches!(result, Err(EncodeError::DisallowedCharacter { .. })),
            "{result:?}"
        );
        let fine = connect_packet(|_| {});
        let size = encoded_len(&fine, ProtocolVersion::V5).unwrap();
        let max = u32::try_from(size - 1).unwrap();
        let result = encode(&fine, ProtocolVersion::V5, max, &mut dst);
        assert_eq!(result, Err(EncodeError::PacketTooLarge { size, max }));
        assert!(dst.is_empty());
    }

    #[test]
    fn remaining_length_boundaries_encode() {
        // Payloads that put the remaining length at the edges of 1, 2 and 3 bytes.
        for remaining in [127_usize, 128, 16_383, 16_384, 2_097_151, 2_097_152] {
            let payload = Bytes::from(vec![0u8; remaining - 5]);
            let packet = Packet::Publish(Publish {
                dup: false,
                delivery: Delivery::AtMostOnce,
                retain: false,
                topic: Some("abc".parse().unwrap()),
                properties: Properties::default().into(),
                payload,
            });
            let bytes = encode_to_vec(&packet, ProtocolVersion::V3_1_1).unwrap();
            let length_len = crate::codec::wire::variable_byte_integer_len(remaining as u32);
            assert_eq!(
                bytes.len(),
                1 + length_len + remaining,
                "remaining {remaining}"
            );
            round_trip(&packet, ProtocolVersion::V3_1_1);
        }
    }
}
