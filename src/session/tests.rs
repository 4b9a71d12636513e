//! Unit tests of the session state machine: packets in, packets and events out, time
//! passed explicitly.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::num::{NonZeroU16, NonZeroU32};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::codec::{
    ConnectReason, Delivery, ProtocolVersion, PubAck, PubComp, PubCompReason, PubRec, PubRel,
    Publish, SubAck, SubscriptionOptions, UnsubAck,
};
use crate::store::{MemoryStore, OutgoingPublish, QueuedRequest, Request, Store};

const SECOND: Duration = Duration::from_secs(1);

fn config(protocol: ProtocolVersion) -> SessionConfig {
    SessionConfig::new("tester".parse().unwrap(), protocol)
}

/// Moves the store of `session` into a new session for the next connection, which the
/// broker accepts with Session Present 1; CONNECT and the events stay to be drained.
fn resume(
    session: &mut Session<MemoryStore>,
    config: SessionConfig,
    now: Instant,
) -> Session<MemoryStore> {
    reconnect_with(session, config, true, Properties::default(), now)
}

/// Returns the configuration of a client that asks to resume the session it holds.
fn resuming_config(protocol: ProtocolVersion) -> SessionConfig {
    let mut resuming = config(protocol);
    resuming.clean_start = false;
    resuming.has_session_state = true;
    resuming
}

/// Returns a session over a fresh store whose transport just connected.
fn started(config: SessionConfig, now: Instant) -> Session<MemoryStore> {
    let mut session = Session::new(config, MemoryStore::new(64), now);
    session.handle_transport_connected(now);
    session
}

fn connack(session_present: bool, reason: ConnectReason, properties: Properties) -> Packet {
    Packet::ConnAck(ConnAck {
        session_present,
        reason,
        properties: properties.into(),
    })
}

/// Returns a session that completed the handshake, with CONNECT and the Connected
/// event drained.
fn connected_with(
    config: SessionConfig,
    properties: Properties,
    now: Instant,
) -> Session<MemoryStore> {
    let mut session = started(config, now);
    session.handle_packet(connack(false, ConnectReason::Success, properties), now);
    assert!(matches!(
        session.poll_transmit().unwrap().packet,
        Packet::Connect(_)
    ));
    assert!(matches!(
        session.poll_event(),
        Some(SessionEvent::Connected { .. })
    ));
    session
}

fn connected(protocol: ProtocolVersion, now: Instant) -> Session<MemoryStore> {
    connected_with(config(protocol), Properties::default(), now)
}

fn transmits(session: &mut Session<MemoryStore>) -> Vec<Transmit> {
    std::iter::from_fn(|| session.poll_transmit()).collect()
}

fn packets(session: &mut Session<MemoryStore>) -> Vec<Packet> {
    transmits(session).into_iter().map(|t| t.packet).collect()
}

fn events(session: &mut Session<MemoryStore>) -> Vec<SessionEvent> {
    std::iter::from_fn(|| session.poll_event()).collect()
}

fn id(value: u16) -> PacketId {
    PacketId::try_from(value).unwrap()
}

fn publish_request(token: u64, qos: QoS, payload: &'static [u8]) -> QueuedRequest {
    QueuedRequest {
        token: RequestToken(token),
        request: Request::Publish(OutgoingPublish {
            topic: "a/b".parse().unwrap(),
            payload: Bytes::from_static(payload),
            qos,
            retain: false,
            properties: BoxedProperties::default(),
        }),
        queued_at: Instant::now(),
    }
}

fn subscribe_request(token: u64, filters: &[&str]) -> QueuedRequest {
    QueuedRequest {
        token: RequestToken(token),
        request: Request::Subscribe {
            filters: filters
                .iter()
                .map(|f| (f.parse().unwrap(), SubscriptionOptions::default()))
                .collect(),
            properties: BoxedProperties::default(),
            automatic_identifier: None,
        },
        queued_at: Instant::now(),
    }
}

fn unsubscribe_request(token: u64) -> QueuedRequest {
    QueuedRequest {
        token: RequestToken(token),
        request: Request::Unsubscribe {
            filters: vec!["a/#".parse().unwrap()],
            properties: BoxedProperties::default(),
        },
        queued_at: Instant::now(),
    }
}

fn queue(session: &mut Session<MemoryStore>, request: QueuedRequest, now: Instant) {
    session.store.push_request(request).unwrap();
    session.handle_requests_queued(now);
}

/// Queues publishes with tokens 1 to `count` at `qos`, each with payload `x`.
fn queue_publishes(session: &mut Session<MemoryStore>, count: u64, qos: QoS, now: Instant) {
    for token in 1..=count {
        queue(session, publish_request(token, qos, b"x"), now);
    }
}

fn inbound_publish(delivery: Delivery, topic: Option<&str>, properties: Properties) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        delivery,
        retain: false,
        topic: topic.map(|t| t.parse().unwrap()),
        properties: properties.into(),
        payload: Bytes::from_static(b"hello"),
    })
}

fn puback(packet_id: PacketId, reason: PubAckReason) -> Packet {
    Packet::PubAck(PubAck {
        packet_id,
        reason,
        properties: Properties::default().into(),
    })
}

fn closed_reason(events: &[SessionEvent]) -> Option<&CloseReason> {
    events.iter().find_map(|event| match event {
        SessionEvent::Closed(reason) => Some(reason),
        _ => None,
    })
}

fn disconnect_reason(packets: &[Packet]) -> Option<DisconnectReason> {
    packets.iter().find_map(|packet| match packet {
        Packet::Disconnect(disconnect) => Some(disconnect.reason),
        _ => None,
    })
}

fn completed(events: &[SessionEvent]) -> Vec<(RequestToken, Result<Outcome, RequestError>)> {
    events
        .iter()
        .filter_map(|event| match event {
            SessionEvent::Completed { token, outcome } => Some((*token, outcome.clone())),
            _ => None,
        })
        .collect()
}

/// Asserts that the session closed for a protocol violation, sending DISCONNECT with
/// `reason` on v5 and nothing on 3.1.1.
fn assert_violation(session: &mut Session<MemoryStore>, reason: DisconnectReason) {
    let sent = packets(session);
    let events = events(session);
    assert!(
        matches!(closed_reason(&events), Some(CloseReason::ProtocolViolation(v)) if v.reason_code() == reason),
        "events: {events:?}"
    );
    if session.config().protocol.is_v5() {
        assert_eq!(disconnect_reason(&sent), Some(reason), "sent: {sent:?}");
    } else {
        assert_eq!(disconnect_reason(&sent), None);
    }
    assert!(session.is_closed());
}

#[test]
fn handshake_sends_connect_for_each_version() {
    let now = Instant::now();
    for protocol in [
        ProtocolVersion::V3_1,
        ProtocolVersion::V3_1_1,
        ProtocolVersion::V5,
    ] {
        let mut session = Session::new(config(protocol), MemoryStore::new(8), now);
        assert!(
            session.poll_transmit().is_none(),
            "nothing before the transport"
        );
        session.handle_transport_connected(now);

        let Packet::Connect(connect) = session.poll_transmit().unwrap().packet else {
            panic!("expected CONNECT");
        };
        assert_eq!(connect.protocol, protocol);
        assert_eq!(connect.keep_alive, 60);
        assert_eq!(session.state_name(), "awaiting_connack");

        session.handle_packet(
            connack(false, ConnectReason::Success, Properties::default()),
            now,
        );
        let events = events(&mut session);
        assert!(matches!(
            events.as_slice(),
            [SessionEvent::Connected {
                session_present: false,
                ..
            }]
        ));
        assert_eq!(session.state_name(), "connected");
    }
}

#[test]
fn v5_connect_announces_receive_maximum_only_when_set() {
    let now = Instant::now();
    let mut limited = config(ProtocolVersion::V5);
    limited.receive_maximum = NonZeroU16::new(20).unwrap();
    let mut session = started(limited, now);
    let Packet::Connect(connect) = session.poll_transmit().unwrap().packet else {
        panic!("expected CONNECT");
    };
    assert_eq!(connect.properties.receive_maximum, NonZeroU16::new(20));
    assert_eq!(connect.properties.topic_alias_maximum, None);
    assert_eq!(connect.properties.session_expiry_interval, None);

    let mut session = started(config(ProtocolVersion::V5), now);
    let Packet::Connect(connect) = session.poll_transmit().unwrap().packet else {
        panic!("expected CONNECT");
    };
    assert!(connect.properties.is_empty());
}

#[test]
fn connack_refusal_closes_with_each_reason() {
    let now = Instant::now();
    let refusals = [
        ConnectReason::UnspecifiedError,
        ConnectReason::MalformedPacket,
        ConnectReason::ProtocolError,
        ConnectReason::ImplementationSpecificError,
        ConnectReason::UnsupportedProtocolVersion,
        ConnectReason::ClientIdentifierNotValid,
        ConnectReason::BadUserNameOrPassword,
        ConnectReason::NotAuthorized,
        ConnectReason::ServerUnavailable,
        ConnectReason::ServerBusy,
        ConnectReason::Banned,
        ConnectReason::BadAuthenticationMethod,
        ConnectReason::TopicNameInvalid,
        ConnectReason::PacketTooLarge,
        ConnectReason::QuotaExceeded,
        ConnectReason::PayloadFormatInvalid,
        ConnectReason::RetainNotSupported,
        ConnectReason::QoSNotSupported,
        ConnectReason::UseAnotherServer,
        ConnectReason::ServerMoved,
        ConnectReason::ConnectionRateExceeded,
    ];
    for protocol in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        for reason in refusals {
            let mut session = started(config(protocol), now);
            transmits(&mut session);
            let properties = Properties {
                reason_string: Some("go away".into()),
                ..Properties::default()
            };
            session.handle_packet(connack(false, reason, properties), now);

            let events = events(&mut session);
            let expected = CloseReason::ConnectRefused {
                reason,
                reason_string: Some("go away".to_owned()),
                server_reference: None,
            };
            assert_eq!(closed_reason(&events), Some(&expected));
            assert!(
                transmits(&mut session).is_empty(),
                "no DISCONNECT after a refusal"
            );
            assert!(session.is_closed());
        }
    }
}

#[test]
fn session_present_reported_when_resuming() {
    let now = Instant::now();
    let resuming = resuming_config(ProtocolVersion::V5);
    let mut session = started(resuming, now);
    session.handle_packet(
        connack(true, ConnectReason::Success, Properties::default()),
        now,
    );
    let events = events(&mut session);
    assert!(matches!(
        events.as_slice(),
        [SessionEvent::Connected {
            session_present: true,
            ..
        }]
    ));
}

#[test]
fn session_present_after_clean_start_is_violation() {
    let now = Instant::now();
    for protocol in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let mut session = started(config(protocol), now);
        transmits(&mut session);
        session.handle_packet(
            connack(true, ConnectReason::Success, Properties::default()),
            now,
        );
        assert_violation(&mut session, DisconnectReason::ProtocolError);
    }
}

#[test]
fn session_present_without_state_is_violation() {
    let now = Instant::now();
    for protocol in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let mut resuming = config(protocol);
        resuming.clean_start = false;
        let mut session = started(resuming, now);
        transmits(&mut session);
        session.handle_packet(
            connack(true, ConnectReason::Success, Properties::default()),
            now,
        );
        assert_violation(&mut session, DisconnectReason::ProtocolError);
    }
}

#[test]
fn expired_queued_publish_is_dropped_unsent() {
    let start = Instant::now();
    let mut session = connected(ProtocolVersion::V5, start);
    let mut request = publish_request(1, QoS::AtLeastOnce, b"stale");
    if let Request::Publish(publish) = &mut request.request {
        publish.properties.message_expiry_interval = Some(10);
    }
    request.queued_at = start;
    queue(&mut session, request, start + Duration::from_secs(10));

    assert!(transmits(&mut session).is_empty(), "expired message sent");
    let events = events(&mut session);
    assert!(
        matches!(
            events.as_slice(),
            [SessionEvent::Completed {
                token: RequestToken(1),
                outcome: Err(RequestError::Expired { interval: 10 }),
            }]
        ),
        "{events:?}"
    );
    assert_eq!(session.store.outbound_len(), 0);
}

#[test]
fn queued_publish_expiry_counts_down_whole_seconds() {
    let start = Instant::now();
    let mut session = connected(ProtocolVersion::V5, start);
    let cases = [
        (1, 10, 1_500, Some(9)),
        (2, 10, 9_999, Some(1)),
        (3, 0, 5_000, Some(0)),
    ];
    for (token, interval, waited_ms, sent) in cases {
        let mut request = publish_request(token, QoS::AtMostOnce, b"x");
        if let Request::Publish(publish) = &mut request.request {
            publish.properties.message_expiry_interval = Some(interval);
        }
        request.queued_at = start;
        queue(
            &mut session,
            request,
            start + Duration::from_millis(waited_ms),
        );
        let packets = packets(&mut session);
        let [Packet::Publish(publish)] = packets.as_slice() else {
            panic!("expected one PUBLISH, got {packets:?}");
        };
        assert_eq!(
            publish.properties.message_expiry_interval, sent,
            "interval {interval} s after {waited_ms} ms"
        );
    }
}

#[test]
fn assigned_client_id_for_non_empty_id_is_violation() {
    let now = Instant::now();
    let mut session = started(config(ProtocolVersion::V5), now);
    transmits(&mut session);
    let properties = Properties {
        assigned_client_identifier: Some("other".into()),
        ..Properties::default()
    };
    session.handle_packet(connack(false, ConnectReason::Success, properties), now);
    assert_violation(&mut session, DisconnectReason::ProtocolError);
}

#[test]
fn packet_before_connack_is_violation() {
    let now = Instant::now();
    let early = [
        Packet::PingResp,
        puback(id(1), PubAckReason::Success),
        inbound_publish(Delivery::AtMostOnce, Some("t"), Properties::default()),
    ];
    for protocol in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        for packet in early.clone() {
            let mut session = started(config(protocol), now);
            transmits(&mut session);
            session.handle_packet(packet, now);
            assert_violation(&mut session, DisconnectReason::ProtocolError);
        }
    }
}

#[test]
fn second_connack_is_violation() {
    let now = Instant::now();
    let mut session = connected(ProtocolVersion::V5, now);
    session.handle_packet(
        connack(false, ConnectReason::Success, Properties::default()),
        now,
    );
    assert_violation(&mut session, DisconnectReason::ProtocolError);
}

#[test]
fn unexpected_packets_from_broker_are_violations() {
    let now = Instant::now();
    let unexpected = [
        Packet::PingReq,
        Packet::Auth(crate::codec::Auth {
            reason: crate::codec::AuthReason::Success,
            properties: Properties::default().into(),
        }),
    ];
    for packet in unexpected {
        let mut session = connected(ProtocolVersion::V5, now);
        session.handle_packet(packet, now);
        assert_violation(&mut session, DisconnectReason::ProtocolError);
    }
}

#[test]
fn decode_error_sends_its_reason_code() {
    let now = Instant::now();
    let mut session = connected(ProtocolVersion::V5, now);
    let error = DecodeError::PacketTooLarge { size: 100, max: 10 };
    session.handle_decode_error(error, now);
    assert_violation(&mut session, DisconnectReason::PacketTooLarge);
}

#[test]
fn connect_timeout_closes_before_and_after_transport() {
    let now = Instant::now();
    let mut waiting_for_socket =
        Session::new(config(ProtocolVersion::V5), MemoryStore::new(8), now);
    assert_eq!(waiting_for_socket.poll_timeout(), Some(now + 10 * SECOND));
    waiting_for_socket.handle_timeout(now + 9 * SECOND);
    assert!(!waiting_for_socket.is_closed());
    waiting_for_socket.handle_timeout(now + 10 * SECOND);
    assert_eq!(
        closed_reason(&events(&mut waiting_for_socket)),
        Some(&CloseReason::ConnectTimeout)
    );

    let mut waiting_for_connack = started(config(ProtocolVersion::V5), now);
    waiting_for_connack.handle_timeout(now + 10 * SECOND);
    assert_eq!(
        closed_reason(&events(&mut waiting_for_connack)),
        Some(&CloseReason::ConnectTimeout)
    );
}

#[test]
fn qos0_publish_completes_when_written() {
    let now = Instant::now();
    let mut session = connected(ProtocolVersion::V5, now);
    queue(&mut session, publish_request(7, QoS::AtMostOnce, b"x"), now);

    let sent = transmits(&mut session);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].written, Some(RequestToken(7)));
    let Packet::Publish(publish) = &sent[0].packet else {
        panic!("expected PUBLISH");
    };
    assert_eq!(publish.delivery, Delivery::AtMostOnce);
    assert!(events(&mut session).is_empty());
    assert_eq!(session.store.outbound_len(), 0);
}

#[test]
fn qos1_publish_completes_on_puback() {
    let now = Instant::now();
    let mut session = connected(ProtocolVersion::V5, now);
    queue(
        &mut session,
        publish_request(1, QoS::AtLeastOnce, b"x"),
        now,
    );
    let sent = packets(&mut session);
    assert!(
        matches!(&sent[..], [Packet::Publish(p)] if p.delivery == Delivery::AtLeastOnce(id(1)))
    );
    assert_eq!(session.store.outbound_len(), 1);

    session.handle_packet(puback(id(1), PubAckReason::NoMatchingSubscribers), now);
    let done = completed(&events(&mut session));
    assert_eq!(done.len(), 1);
    let (token, Ok(Outcome::Publish(outcome))) = &done[0] else {
        panic!("expected a publish outcome: {done:?}");
    };
    assert_eq!(*token, RequestToken(1));
    assert_eq!(outcome.reason, Some(PubAckReason::NoMatchingSubscribers));
    assert_eq!(session.store.outbound_len(), 0);
}

#[test]
fn qos1_failed_puback_rejects_publish() {
    let now = Instant::now();
    let mut session = connected(ProtocolVersion::V5, now);
    queue(
        &mut session,
        publish_request(1, QoS::AtLeastOnce, b"x"),
        now,
    );
    transmits(&mut session);
    session.handle_packet(puback(id(1), PubAckReason::NotAuthorized), now);
    let done = completed(&events(&mut session));
    assert!(matches!(
        &done[..],
        [(
            _,
            Err(RequestError::Rejected {
                reason: RejectReason::Publish(PubAckReason::NotAuthorized),
                ..
            })
        )]
    ));
    assert!(!session.is_closed());
}

#[test]
fn qos2_publish_completes_after_pubrec_pubrel_pubcomp() {
    let now = Instant::now();
    let mut session = connected(ProtocolVersion::V3_1_1, now);
    queue(
        &mut session,
        publish_request(3, QoS::ExactlyOnce, b"x"),
        now,
    );
    assert!(
        matches!(&packets(&mut session)[..], [Packet::Publish(p)] if p.delivery == Delivery::ExactlyOnce(id(1)))
    );

    let pubrec = Packet::PubRec(PubRec {
        packet_id: id(1),
        reason: PubAckReason::Success,
        properties: Properties::default().into(),
    });
    session.handle_packet(pubrec.clone(), now);
    assert!(matches!(&packets(&mut session)[..], [Packet::PubRel(r)] if r.packet_id == id(1)));
    assert!(
        events(&mut session).is_empty(),
        "not complete before PUBCOMP"
    );

    session.handle_packet(pubrec, now);
    assert!(
        matches!(&packets(&mut session)[..], [Packet::PubRel(_)]),
        "PUBREL resent"
    );

    session.handle_packet(
        Packet::PubComp(PubComp {
            packet_id: id(1),
            reason: PubCompReason::Success,
            properties: Properties::default().into(),
        }),
        now,
    );
    let done = completed(&events(&mut session));
    assert!(matches!(
        &done[..],
        [(RequestToken(3), Ok(Outcome::Publish(_)))]
    ));
    assert_eq!(session.store.outbound_len(), 0);
}

#[test]
fn inbound_qos0_delivered_without_ack() {
    let now = Instant::now();
    let mut session = connected(ProtocolVersion::V5, now);
    session.handle_packet(
        inbound_publish(Delivery::AtMostOnce, Some("t/1"), Properties::default()),
        now,
    );
    let events = events(&mut session);
    assert!(matches!(
        &events[..],
        [SessionEvent::Message { message, ack: None }] if message.topic.as_str() == "t/1"
    ));
    assert!(transmits(&mut session).is_empty());
}

#[test]
fn inbound_qos1_acked_only_after_delivery() {
    let now = Instant::now();
    let mut session = connected(ProtocolVersion::V3_1_1, now);
    session.handle_packet(
        inbound_publish(
            Delivery::AtLeastOnce(id(9)),
            Some("t"),
            Properties::default(),
        ),
        now,
    );
    let Some(SessionEvent::Message { ack: Some(ack), .. }) = session.poll_event() else {
        panic!("expected a message with an ack");
    };
    assert!(
        transmits(&mut session).is_empty(),
        "no PUBACK before delivery"
    );
    assert_eq!(session.inflight_in(), 1);

    session.handle_delivered(ack, now);
    assert!(matches!(&packets(&mut session)[..], [Packet::PubAck(a)] if a.packet_id == id(9)));
    assert_eq!(session.inflight_in(), 0);
}

#[test]
fn inbound_qos2_delivered_once_and_completed_by_pubrel() {
    let now = Instant::now();
    let mut session = connected(ProtocolVersion::V5, now);
    let qos2 = inbound_publish(
        Delivery::ExactlyOnce(id(4)),
        Some("t"),
        Properties::default(),
    );
    session.handle_packet(qos2.clone(), now);
    let Some(SessionEvent::Message { ack: Some(ack), .. }) = session.poll_event() else {
        panic!("expected a message with an ack");
    };
    session.handle_packet(qos2.clone(), now);
    assert!(
        events(&mut session).is_empty(),
        "duplicate during delivery is dropped"
    );
    assert!(transmits(&mut session).is_empty());

    session.handle_delivered(ack, now);
    assert!(matches!(&packets(&mut session)[..], [Packet::PubRec(r)] if r.packet_id == id(4)));

    session.handle_packet(qos2, now);
    assert!(
        events(&mut session).is_empty(),
        "duplicate after delivery is not delivered"
    );
    assert!(matches!(&packets(&mut session)[..], [Packet::PubRec(_)]));

    let pubrel = Packet::PubRel(PubRel {
        packet_id: id(4),
        reason: PubCompReason::Success,
        properties: Properties::default().into(),
    });
    session.handle_packet(pubrel.clone(), now);
    assert!(
        matches!(&packets(&mut session)[..], [Packet::PubComp(c)] if c.reason == PubCompReason::Success)
    );
    assert_eq!(session.inflight_in(), 0);

    session.handle_packet(pubrel, now);
    assert!(matches!(
        &packets(&mut session)[..],
        [Packet::PubComp(c)] if c.reason == PubCompReason::PacketIdentifierNotFound
    ));
    assert!(!session.is_closed());
}

/// Builds an inbound QoS 2 PUBLISH with packet identifier 6 on topic `t`.
fn qos2(dup: bool) -> Packet {
    let Packet::Publish(publish) = inbound_publish(
        Delivery::ExactlyOnce(id(6)),
        Some("t"),
        Properties::default(),
    ) else {
        unreachable!("inbound_publish builds a PUBLISH");
    };
    Packet::Publish(Publish { dup, ..publish })
}

/// Resumes `session` on a new connection and checks that the broker's copy of the
/// message from [`qos2`] gets PUBREC and is not delivered again.
fn assert_resent_qos2_not_redelivered(
    session: &mut Session<MemoryStore>,
    config: SessionConfig,
    now: Instant,
) {
    let mut next = resume(session, config, now);
    packets(&mut next);
    events(&mut next);
    next.handle_packet(qos2(true), now);
    assert!(
        events(&mut next).is_empty(),
        "resent copy is not delivered again"
    );
    assert!(matches!(&packets(&mut next)[..], [Packet::PubRec(r)] if r.packet_id == id(6)));
}

#[test]
fn handed_over_qos2_not_redelivered_after_resume() {
    let now = Instant::now();
    let resuming = resuming_config(ProtocolVersion::V3_1_1);
    let mut session = connected_with(resuming.clone(), Properties::default(), now);

    // The message still waits in a full mailbox when the connection ends, so no PUBREC
    // was sent.
    session.handle_packet(qos2(false), now);
    let Some(SessionEvent::Message { ack: Some(ack), .. }) = session.poll_event() else {
        panic!("expected a message with an ack");
    };
    session.handle_handed_over(ack);
    session.handle_packet(qos2(true), now);
    assert!(
        events(&mut session).is_empty(),
        "copy during delivery is dropped"
    );
    assert!(
        transmits(&mut session).is_empty(),
        "no PUBREC before delivery ends"
    );

    assert_resent_qos2_not_redelivered(&mut session, resuming, now);
}

#[test]
fn qos2_delivered_after_close_not_redelivered_after_resume() {
    let now = Instant::now();
    let resuming = resuming_config(ProtocolVersion::V5);
    let mut session = connected_with(resuming.clone(), Properties::default(), now);

    // The broker's DISCONNECT arrives in the same read, so the session closes before
    // the message reaches the application.
    session.handle_packet(qos2(false), now);
    session.handle_packet(
        Packet::Disconnect(Disconnect {
            reason: DisconnectReason::ServerShuttingDown,
            properties: Properties::default().into(),
        }),
        now,
    );
    let Some(SessionEvent::Message { ack: Some(ack), .. }) = session.poll_event() else {
        panic!("expected a message with an ack");
    };
    session.handle_delivered(ack, now);
    assert!(transmits(&mut session).is_empty(), "no PUBREC after close");

    assert_resent_qos2_not_redelivered(&mut session, resuming, now);
}

#[test]
fn packet_ids_shared_and_never_reused() {
    let now = Instant::now();
    let mut session = connected(ProtocolVersion::V5, now);
    session.store.set_packet_id_cursor(PacketId::MAX);
    queue(
        &mut session,
        publish_request(1, QoS::AtLeastOnce, b"x"),
        now,
    );
    queue(&mut session, subscribe_request(2, &["a/#"]), now);
    queue(&mut session, unsubscribe_request(3), now);
    let sent = packets(&mut session);
    let ids: Vec<u16> = sent
        .iter()
        .map(|packet| match packet {
            Packet::Publish(p) => p.delivery.packet_id().unwrap().get(),
            Packet::Subscribe(s) => s.packet_id.get(),
            Packet::Unsubscribe(u) => u.packet_id.get(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(ids, [u16::MAX, 1, 2], "wraps from 65535 to 1, skipping 0");

    // Free 65535 and 2, keep 1 in flight: the next identifiers skip 1.
    session.handle_packet(puback(PacketId::MAX, PubAckReason::Success), now);
    session.store.remove_outbound(id(2));
    session.store.set_packet_id_cursor(id(1));
    queue(
        &mut session,
        publish_request(4, QoS::AtLeastOnce, b"x"),
        now,
    );
    assert!(
        matches!(&packets(&mut session)[..], [Packet::Publish(p)] if p.delivery.packet_id() == Some(id(2)))
    );
}

#[test]
fn inflight_window_uses_smaller_limit() {
    let now = Instant::now();
    let mut limited = config(ProtocolVersion::V5);
    limited.max_inflight = NonZeroU16::new(3).unwrap();
    let broker = Properties {
        receive_maximum: NonZeroU16::new(2),
        ..Properties::default()
    };
    let mut session = connected_with(limited.clone(), broker, now);
    queue_publishes(&mut session, 4, QoS::AtLeastOnce, now);
    assert_eq!(packets(&mut session).len(), 2, "broker allows 2");
    assert_eq!(session.store.queued_len(), 2);

    session.handle_packet(puback(id(1), PubAckReason::Success), now);
    assert_eq!(packets(&mut session).len(), 1, "one slot freed");

    let generous = Properties {
        receive_maximum: NonZeroU16::new(100),
        ..Properties::default()
    };
    let mut session = connected_with(limited, generous, now);
    queue_publishes(&mut session, 4, QoS::AtLeastOnce, now);
    assert_eq!(packets(&mut session).len(), 3, "configured maximum 3");
}

#[test]
fn requests_behind_blocked_head_wait_in_order() {
    let now = Instant::now();
    let mut limited = config(ProtocolVersion::V5);
    limited.max_inflight = NonZeroU16::new(1).unwrap();
    let mut session = connected_with(limited, Properties::default(), now);
    queue(
        &mut session,
        publish_request(1, QoS::AtLeastOnce, b"a"),
        now,
    );
    assert_eq!(packets(&mut session).len(), 1);

    queue(
        &mut session,
        publish_request(2, QoS::AtLeastOnce, b"b"),
        now,
    );
    queue(&mut session, publish_request(3, QoS::AtMostOnce, b"c"), now);
    assert!(packets(&mut session).is_empty(), "the window is full");
    assert_eq!(session.store.queued_len(), 2);

    session.handle_packet(puback(id(1), PubAckReason::Success), now);
    let sent = packets(&mut session);
    assert!(
        matches!(&sent[..], [Packet::Publish(first), Packet::Publish(second)]
            if first.payload == b"b"[..] && second.payload == b"c"[..]),
        "{sent:?}"
    );
    assert_eq!(session.store.queued_len(), 0);
}

#[test]
fn pingreq_sent_after_idle_interval_and_timeout_closes() {
    let now = Instant::now();
    let mut session = connected(ProtocolVersion::V3_1_1, now);
    assert_eq!(session.poll_timeout(), Some(now + 60 * SECOND));

    session.handle_timeout(now + 59 * SECOND);
    assert!(transmits(&mut session).is_empty());
    session.handle_timeout(now + 60 * SECOND);
    assert!(matches!(&packets(&mut session)[..], [Packet::PingReq]));
    assert_eq!(session.poll_timeout(), Some(now + 120 * SECOND));

    session.handle_packet(Packet::PingResp, now + 61 * SECOND);
    assert_eq!(
        session.poll_timeout(),
        Some(now + 120 * SECOND),
        "next PINGREQ due"
    );
    session.handle_timeout(now + 120 * SECOND);
    assert!(matches!(&packets(&mut session)[..], [Packet::PingReq]));

    session.handle_timeout(now + 180 * SECOND);
    assert_eq!(
        closed_reason(&events(&mut session)),
        Some(&CloseReason::KeepAliveTimeout)
    );
}

#[test]
fn sending_a_packet_postpones_pingreq() {
    let now = Instant::now();
    let mut session = connected(ProtocolVersion::V5, now);
    queue(
        &mut session,
        publish_request(1, QoS::AtMostOnce, b"x"),
        now + 30 * SECOND,
    );
    transmits(&mut session);
    assert_eq!(session.poll_timeout(), Some(now + 90 * SECOND));
}

#[test]
fn acknowledgements_do_not_postpone_pingreq() {
    let now = Instant::now();
    let mut session = connected(ProtocolVersion::V5, now);
    for (index, delivery) in [Delivery::AtLeastOnce(id(1)), Delivery::ExactlyOnce(id(2))]
        .into_iter()
        .enumerate()
    {
        let at = now + (10 + 10 * index as u32) * SECOND;
        session.handle_packet(
            inbound_publish(delivery, Some("t"), Properties::default()),
            at,
        );
        let Some(SessionEvent::Message { ack: Some(ack), .. }) = session.poll_event() else {
            panic!("expected a message with an ack");
        };
        session.handle_delivered(ack, at);
    }
    let pubrel = Packet::PubRel(PubRel {
        packet_id: id(2),
        reason: PubCompReason::Success,
        properties: Properties::default().into(),
    });
    session.handle_packet(pubrel, now + 30 * SECOND);
    assert!(matches!(
        &packets(&mut session)[..],
        [Packet::PubAck(_), Packet::PubRec(_), Packet::PubComp(_)]
    ));
    assert_eq!(
        session.poll_timeout(),
        Some(now + 60 * SECOND),
        "PINGREQ still due one interval after CONNECT"
    );
    session.handle_timeout(now + 60 * SECOND);
    assert!(matches!(&packets(&mut session)[..], [Packet::PingReq]));
}

#[test]
fn server_keep_alive_overrides_configured_interval() {
    let now = Instant::now();
    let broker = Properties {
        server_keep_alive: Some(5),
        ..Properties::default()
    };
    let session = connected_with(config(ProtocolVersion::V5), broker, now);
    assert_eq!(session.poll_timeout(), Some(now + 5 * SECOND));

    let off = Properties {
        server_keep_alive: Some(0),
        ..Properties::default()
    };
    let session = connected_with(config(ProtocolVersion::V5), off, now);
    assert_eq!(session.poll_timeout(), None);
}

#[test]
fn inbound_topic_alias_rejected_when_none_announced() {
    let now = Instant::now();
    let mut session = connected(ProtocolVersion::V5, now);
    let aliased = Properties {
        topic_alias: NonZeroU16::new(1),
        ..Properties::default()
    };
    session.handle_packet(
        inbound_publish(Delivery::AtMostOnce, Some("t"), aliased),
        now,
    );
    assert_violation(&mut session, DisconnectReason::TopicAliasInvalid);
}

#[test]
fn inbound_topic_alias_defined_then_reused() {
    let now = Instant::now();
    let mut aliases = config(ProtocolVersion::V5);
    aliases.topic_alias_maximum = 10;
    let mut session = connected_with(aliases, Properties::default(), now);
    let alias = |n| Properties {
        topic_alias: NonZeroU16::new(n),
        ..Properties::default()
    };

    session.handle_packet(
        inbound_publish(Delivery::AtMostOnce, Some("long/topic"), alias(3)),
        now,
    );
    session.handle_packet(inbound_publish(Delivery::AtMostOnce, None, alias(3)), now);
    let topics: Vec<String> = events(&mut session)
        .into_iter()
        .map(|event| match event {
            SessionEvent::Message { message, .. } => {
                assert_eq!(message.properties.topic_alias, None);
                message.topic.to_string()
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(topics, ["long/topic", "long/topic"]);

    session.handle_packet(inbound_publish(Delivery::AtMostOnce, None, alias(4)), now);
    assert_violation(&mut session, DisconnectReason::ProtocolError);

    let mut session = connected_with(config(ProtocolVersion::V5), Properties::default(), now);
    session.handle_packet(
        inbound_publish(Delivery::AtMostOnce, Some("t"), alias(11)),
        now,
    );
    assert_violation(&mut session, DisconnectReason::TopicAliasInvalid);
}

#[test]
fn inbound_publish_without_topic_or_alias_is_violation() {
    let now = Instant::now();
    let mut session = connected(ProtocolVersion::V5, now);
    session.handle_packet(
        inbound_publish(Delivery::AtMostOnce, None, Properties::default()),
        now,
    );
    assert_violation(&mut session, DisconnectReason::ProtocolError);
}

#[test]
fn publish_larger_than_broker_maximum_refused_before_sending() {
    let now = Instant::now();
    let broker = Properties {
        maximum_packet_size: NonZeroU32::new(20),
        ..Properties::default()
    };
    let mut session = connected_with(config(ProtocolVersion::V5), broker, now);
    queue(
        &mut session,
        publish_request(1, QoS::AtLeastOnce, &[0; 64]),
        now,
    );
    assert!(transmits(&mut session).is_empty());
    let done = completed(&events(&mut session));
    assert!(
        matches!(&done[..], [(_, Err(RequestError::PacketTooLarge { max: 20, size }))] if *size > 64)
    );
    assert_eq!(
        session.store.outbound_len(),
        0,
        "no identifier kept for a refused packet"
    );

    queue(&mut session, publish_request(2, QoS::AtMostOnce, b"x"), now);
    assert_eq!(transmits(&mut session).len(), 1, "small packets still go");
}

#[test]
fn broker_maximum_qos_and_retain_refused_before_sending() {
    let now = Instant::now();
    let broker = Properties {
        maximum_qos: Some(QoS::AtMostOnce),
        retain_available: Some(false),
        ..Properties::default()
    };
    let mut session = connected_with(config(ProtocolVersion::V5), broker, now);
    queue(
        &mut session,
        publish_request(1, QoS::AtLeastOnce, b"x"),
        now,
    );
    let mut retained = publish_request(2, QoS::AtMostOnce, b"x");
    if let Request::Publish(publish) = &mut retained.request {
        publish.retain = true;
    }
    queue(&mut session, retained, now);

    assert!(transmits(&mut session).is_empty());
    let done = completed(&events(&mut session));
    assert_eq!(done.len(), 2);
    assert!(done
        .iter()
        .all(|(_, outcome)| matches!(outcome, Err(RequestError::Invalid(_)))));
}

#[test]
fn unknown_publish_acks_tolerated() {
    let now = Instant::now();
    for protocol in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let mut session = connected(protocol, now);
        session.handle_packet(puback(id(1), PubAckReason::Success), now);
        session.handle_packet(
            Packet::PubComp(PubComp {
                packet_id: id(2),
                reason: PubCompReason::Success,
                properties: Properties::default().into(),
            }),
            now,
        );
        assert!(events(&mut session).is_empty());
        assert!(!session.is_closed());
    }
}

#[test]
fn unknown_pubrec_gets_pubrel() {
    let now = Instant::now();
    let pubrec = |value, reason| {
        Packet::PubRec(PubRec {
            packet_id: id(value),
            reason,
            properties: Properties::default().into(),
        })
    };
    for (protocol, released) in [
        (ProtocolVersion::V3_1_1, PubCompReason::Success),
        (ProtocolVersion::V5, PubCompReason::PacketIdentifierNotFound),
    ] {
        let mut session = connected(protocol, now);
        session.handle_packet(pubrec(7, PubAckReason::Success), now);
        assert!(matches!(
            &packets(&mut session)[..],
            [Packet::PubRel(rel)] if rel.packet_id == id(7) && rel.reason == released
        ));
        // A failed PUBREC ended the broker's flow, so it gets no PUBREL.
        session.handle_packet(pubrec(8, PubAckReason::UnspecifiedError), now);
        assert!(packets(&mut session).is_empty());
        assert!(events(&mut session).is_empty());
        assert!(!session.is_closed());
    }
}

/// After the PUBREL for an unknown PUBREC, the broker still owes a PUBCOMP for that
/// identifier. A SUBSCRIBE queued meanwhile must take another identifier, and the
/// PUBCOMP arriving then must not close the session.
#[test]
fn released_id_skipped_until_pubcomp() {
    let now = Instant::now();
    for protocol in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let mut session = connected(protocol, now);
        let pubrec = PubRec {
            packet_id: id(1),
            reason: PubAckReason::Success,
            properties: Properties::default().into(),
        };
        session.handle_packet(Packet::PubRec(pubrec), now);
        assert!(matches!(
            &packets(&mut session)[..],
            [Packet::PubRel(rel)] if rel.packet_id == id(1)
        ));

        queue(&mut session, subscribe_request(1, &["a"]), now);
        assert!(matches!(
            &packets(&mut session)[..],
            [Packet::Subscribe(subscribe)] if subscribe.packet_id != id(1)
        ));

        let pubcomp = PubComp {
            packet_id: id(1),
            reason: PubCompReason::Success,
            properties: Properties::default().into(),
        };
        session.handle_packet(Packet::PubComp(pubcomp), now);
        let closed = events(&mut session);
        assert!(
            closed_reason(&closed).is_none(),
            "{protocol:?}: session closed: {closed:?}"
        );
        assert!(!session.is_closed(), "{protocol:?}");
    }
}

#[test]
fn released_id_follows_broker_session() {
    let now = Instant::now();
    let pubrec = Packet::PubRec(PubRec {
        packet_id: id(1),
        reason: PubAckReason::Success,
        properties: Properties::default().into(),
    });
    let mut session = connected(ProtocolVersion::V5, now);
    session.handle_packet(pubrec.clone(), now);
    packets(&mut session);

    // A repeated PUBREC gets the same PUBREL.
    session.handle_packet(pubrec, now);
    assert!(matches!(
        &packets(&mut session)[..],
        [Packet::PubRel(rel)] if rel.packet_id == id(1)
            && rel.reason == PubCompReason::PacketIdentifierNotFound
    ));

    // A resumed session sends it again, and a new session drops the identifier.
    let released = |packets: &[Packet]| {
        packets
            .iter()
            .any(|packet| matches!(packet, Packet::PubRel(rel) if rel.packet_id == id(1)))
    };
    let config = resuming_config(ProtocolVersion::V5);
    let mut resumed = reconnect_with(
        &mut session,
        config.clone(),
        true,
        Properties::default(),
        now,
    );
    assert!(released(&packets(&mut resumed)));
    let mut fresh = reconnect_with(&mut resumed, config, false, Properties::default(), now);
    assert!(!released(&packets(&mut fresh)));
    assert_eq!(fresh.store.outbound_len(), 0);

    // Without a caller to wait for, the release does not hold back DISCONNECT.
    let mut session = connected(ProtocolVersion::V5, now);
    session.handle_packet(
        Packet::PubRec(PubRec {
            packet_id: id(2),
            reason: PubAckReason::Success,
            properties: Properties::default().into(),
        }),
        now,
    );
    packets(&mut session);
    session.handle_disconnect(normal_disconnect(), now);
    assert!(matches!(
        &packets(&mut session)[..],
        [Packet::Disconnect(_)]
    ));
}

#[test]
fn ack_for_other_flow_is_violation() {
    let now = Instant::now();
    let mut session = connected(ProtocolVersion::V5, now);
    queue(&mut session, subscribe_request(1, &["a"]), now);
    transmits(&mut session);
    session.handle_packet(puback(id(1), PubAckReason::Success), now);
    assert_violation(&mut session, DisconnectReason::ProtocolError);

    let mut session = connected(ProtocolVersion::V5, now);
    queue(
        &mut session,
        publish_request(1, QoS::AtLeastOnce, b"x"),
        now,
    );
    transmits(&mut session);
    session.handle_packet(
        Packet::PubRec(PubRec {
            packet_id: id(1),
            reason: PubAckReason::Success,
            properties: Properties::default().into(),
        }),
        now,
    );
    assert_violation(&mut session, DisconnectReason::ProtocolError);
}

#[test]
fn suback_completes_subscribe_and_checks_count() {
    let now = Instant::now();
    let suback = |reasons: Vec<SubAckReason>| {
        Packet::SubAck(SubAck {
            packet_id: id(1),
            reasons,
            properties: Properties::default().into(),
        })
    };

    let mut session = connected(ProtocolVersion::V5, now);
    queue(&mut session, subscribe_request(5, &["a/+", "b/#"]), now);
    transmits(&mut session);
    session.handle_packet(
        suback(vec![SubAckReason::GrantedQoS1, SubAckReason::NotAuthorized]),
        now,
    );
    let done = completed(&events(&mut session));
    assert!(
        matches!(&done[..], [(RequestToken(5), Ok(Outcome::Subscribe(o)))] if o.reasons.len() == 2)
    );

    let mut session = connected(ProtocolVersion::V5, now);
    queue(&mut session, subscribe_request(5, &["a/+"]), now);
    transmits(&mut session);
    session.handle_packet(suback(vec![SubAckReason::NotAuthorized]), now);
    let done = completed(&events(&mut session));
    assert!(matches!(
        &done[..],
        [(_, Err(RequestError::Rejected { .. }))]
    ));

    let mut session = connected(ProtocolVersion::V5, now);
    queue(&mut session, subscribe_request(5, &["a/+", "b"]), now);
    transmits(&mut session);
    session.handle_packet(suback(vec![SubAckReason::GrantedQoS0]), now);
    assert_violation(&mut session, DisconnectReason::ProtocolError);

    let mut session = connected(ProtocolVersion::V3_1_1, now);
    session.handle_packet(suback(vec![SubAckReason::GrantedQoS0]), now);
    assert_violation(&mut session, DisconnectReason::ProtocolError);
}

#[test]
fn unsuback_completes_unsubscribe_in_both_versions() {
    let now = Instant::now();
    for (protocol, reasons) in [
        (ProtocolVersion::V3_1_1, vec![]),
        (
            ProtocolVersion::V5,
            vec![crate::codec::UnsubAckReason::Success],
        ),
    ] {
        let mut session = connected(protocol, now);
        queue(&mut session, unsubscribe_request(8), now);
        transmits(&mut session);
        session.handle_packet(
            Packet::UnsubAck(UnsubAck {
                packet_id: id(1),
                reasons,
                properties: Properties::default().into(),
            }),
            now,
        );
        let done = completed(&events(&mut session));
        assert!(matches!(
            &done[..],
            [(RequestToken(8), Ok(Outcome::Unsubscribe(_)))]
        ));
    }
}

#[test]
fn receive_maximum_exceeded_is_violation() {
    let now = Instant::now();
    let mut limited = config(ProtocolVersion::V5);
    limited.receive_maximum = NonZeroU16::new(2).unwrap();
    let mut session = connected_with(limited, Properties::default(), now);
    for packet_id in 1..=2 {
        session.handle_packet(
            inbound_publish(
                Delivery::AtLeastOnce(id(packet_id)),
                Some("t"),
                Properties::default(),
            ),
            now,
        );
    }
    assert_eq!(events(&mut session).len(), 2);
    session.handle_packet(
        inbound_publish(
            Delivery::ExactlyOnce(id(3)),
            Some("t"),
            Properties::default(),
        ),
        now,
    );
    assert_violation(&mut session, DisconnectReason::ReceiveMaximumExceeded);
}

/// A QoS 2 message waiting for room in a full mailbox is one unacknowledged message of
/// the broker, although the session records its identifier before PUBREC.
#[test]
fn handed_over_qos2_counted_once() {
    let now = Instant::now();
    let mut limited = config(ProtocolVersion::V5);
    limited.receive_maximum = NonZeroU16::new(2).unwrap();
    let mut session = connected_with(limited, Properties::default(), now);
    session.handle_packet(qos2(false), now);
    let Some(SessionEvent::Message { ack: Some(ack), .. }) = session.poll_event() else {
        panic!("expected a message with an ack");
    };
    session.handle_handed_over(ack);

    // The broker may send a second message within a Receive Maximum of 2.
    session.handle_packet(
        inbound_publish(
            Delivery::AtLeastOnce(id(7)),
            Some("t"),
            Properties::default(),
        ),
        now,
    );
    let events = events(&mut session);
    assert_eq!(closed_reason(&events), None, "second message accepted");
    assert!(matches!(&events[..], [SessionEvent::Message { .. }]));
    assert_eq!(session.inflight_in(), 2);
}

#[test]
fn disconnect_waits_for_inflight_acks() {
    let now = Instant::now();
    let mut session = connected(ProtocolVersion::V5, now);
    queue(
        &mut session,
        publish_request(1, QoS::AtLeastOnce, b"x"),
        now,
    );
    transmits(&mut session);
    session.handle_disconnect(normal_disconnect(), now);
    assert!(
        transmits(&mut session).is_empty(),
        "DISCONNECT waits for the PUBACK"
    );
    assert_eq!(session.state_name(), "awaiting_inflight_acks");

    queue(&mut session, publish_request(2, QoS::AtMostOnce, b"x"), now);
    assert!(
        transmits(&mut session).is_empty(),
        "no new requests while disconnecting"
    );

    session.handle_packet(puback(id(1), PubAckReason::Success), now);
    let sent = packets(&mut session);
    assert_eq!(
        disconnect_reason(&sent),
        Some(DisconnectReason::NormalDisconnection)
    );
    let events = events(&mut session);
    assert_eq!(completed(&events).len(), 1);
    assert_eq!(closed_reason(&events), Some(&CloseReason::Requested));
}

#[test]
fn disconnect_sent_anyway_after_timeout() {
    let now = Instant::now();
    let mut session = connected(ProtocolVersion::V5, now);
    queue(
        &mut session,
        publish_request(1, QoS::AtLeastOnce, b"x"),
        now,
    );
    transmits(&mut session);
    session.handle_disconnect(normal_disconnect(), now);
    assert_eq!(session.poll_timeout(), Some(now + 5 * SECOND));
    session.handle_timeout(now + 5 * SECOND);
    assert_eq!(
        disconnect_reason(&packets(&mut session)),
        Some(DisconnectReason::NormalDisconnection)
    );
    assert_eq!(
        closed_reason(&events(&mut session)),
        Some(&CloseReason::Requested)
    );
    assert_eq!(
        session.store.outbound_len(),
        1,
        "unacknowledged flow stays in the store"
    );
}

#[test]
fn disconnect_during_connect_closes_at_once() {
    let now = Instant::now();
    let mut session = started(config(ProtocolVersion::V5), now);
    transmits(&mut session);
    session.handle_disconnect(normal_disconnect(), now);
    assert!(transmits(&mut session).is_empty());
    assert_eq!(
        closed_reason(&events(&mut session)),
        Some(&CloseReason::Requested)
    );
}

#[test]
fn broker_disconnect_closes_session() {
    let now = Instant::now();
    let mut session = connected(ProtocolVersion::V5, now);
    session.handle_packet(
        Packet::Disconnect(Disconnect {
            reason: DisconnectReason::ServerShuttingDown,
            properties: Properties::default().into(),
        }),
        now,
    );
    assert!(transmits(&mut session).is_empty());
    assert!(matches!(
        closed_reason(&events(&mut session)),
        Some(CloseReason::DisconnectedByBroker {
            reason: DisconnectReason::ServerShuttingDown,
            ..
        })
    ));
}

#[test]
fn resumed_session_resends_unacknowledged_flows() {
    let now = Instant::now();
    let resuming = resuming_config(ProtocolVersion::V5);
    let mut session = connected_with(resuming.clone(), Properties::default(), now);
    queue(
        &mut session,
        publish_request(1, QoS::AtLeastOnce, b"x"),
        now,
    );
    transmits(&mut session);

    let mut next = resume(&mut session, resuming, now);
    let sent = packets(&mut next);
    assert!(
        matches!(&sent[..], [Packet::Connect(_), Packet::Publish(p)] if p.dup && p.delivery == Delivery::AtLeastOnce(id(1)))
    );
}

#[test]
fn automatic_identifier_removed_without_broker_support() {
    let now = Instant::now();
    let identifier = NonZeroU32::new(7).unwrap();
    let with_identifier = |token| {
        let mut request = subscribe_request(token, &["a/#"]);
        if let Request::Subscribe {
            properties,
            automatic_identifier,
            ..
        } = &mut request.request
        {
            properties.subscription_identifiers = vec![identifier];
            *automatic_identifier = Some(identifier);
        }
        request
    };
    let no_identifiers = Properties {
        subscription_identifier_available: Some(false),
        ..Properties::default()
    };

    let mut session = connected_with(config(ProtocolVersion::V5), no_identifiers, now);
    queue(&mut session, with_identifier(1), now);
    let sent = packets(&mut session);
    assert!(
        matches!(&sent[..], [Packet::Subscribe(s)] if s.properties.subscription_identifiers.is_empty())
    );

    let mut session = connected(ProtocolVersion::V5, now);
    queue(&mut session, with_identifier(1), now);
    let sent = packets(&mut session);
    assert!(
        matches!(&sent[..], [Packet::Subscribe(s)] if s.properties.subscription_identifiers == [identifier])
    );
}

#[test]
fn repeated_qos1_packet_id_is_violation() {
    let now = Instant::now();
    let qos1 = inbound_publish(
        Delivery::AtLeastOnce(id(1)),
        Some("t"),
        Properties::default(),
    );
    for protocol in [ProtocolVersion::V5, ProtocolVersion::V3_1_1] {
        let mut session = connected(protocol, now);
        session.handle_packet(qos1.clone(), now);
        assert_eq!(events(&mut session).len(), 1, "{protocol:?}");
        session.handle_packet(qos1.clone(), now);
        assert_violation(&mut session, DisconnectReason::ProtocolError);
    }

    // QoS 2 reusing the identifier of a QoS 1 message being delivered.
    let mut session = connected(ProtocolVersion::V5, now);
    session.handle_packet(qos1.clone(), now);
    events(&mut session);
    session.handle_packet(
        inbound_publish(
            Delivery::ExactlyOnce(id(1)),
            Some("t"),
            Properties::default(),
        ),
        now,
    );
    assert_violation(&mut session, DisconnectReason::ProtocolError);
}

#[test]
fn repeated_qos1_flood_stays_within_receive_maximum() {
    let now = Instant::now();
    let mut limited = config(ProtocolVersion::V5);
    limited.receive_maximum = NonZeroU16::new(10).unwrap();
    let mut session = connected_with(limited, Properties::default(), now);
    let qos1 = inbound_publish(
        Delivery::AtLeastOnce(id(1)),
        Some("t"),
        Properties::default(),
    );
    for _ in 0..100 {
        session.handle_packet(qos1.clone(), now);
    }
    let messages = events(&mut session)
        .iter()
        .filter(|event| matches!(event, SessionEvent::Message { .. }))
        .count();
    assert_eq!(messages, 1);
    assert!(session.is_closed());
}

#[test]
fn v3_qos1_redelivery_with_dup_acknowledged_once() {
    let now = Instant::now();
    let mut session = connected(ProtocolVersion::V3_1_1, now);
    let Packet::Publish(first) = inbound_publish(
        Delivery::AtLeastOnce(id(3)),
        Some("t"),
        Properties::default(),
    ) else {
        unreachable!()
    };
    session.handle_packet(Packet::Publish(first.clone()), now);
    let Some(SessionEvent::Message { ack: Some(ack), .. }) = session.poll_event() else {
        panic!("expected a message with an ack");
    };
    let again = Publish { dup: true, ..first };
    session.handle_packet(Packet::Publish(again), now);
    assert!(events(&mut session).is_empty(), "redelivery not delivered");
    assert!(!session.is_closed());

    session.handle_delivered(ack, now);
    assert!(matches!(&packets(&mut session)[..], [Packet::PubAck(a)] if a.packet_id == id(3)));
    assert_eq!(session.inflight_in(), 0);
}

#[test]
fn qos1_reusing_id_awaiting_pubrel_is_violation() {
    let now = Instant::now();
    let mut session = connected(ProtocolVersion::V5, now);
    session.handle_packet(
        inbound_publish(
            Delivery::ExactlyOnce(id(2)),
            Some("t"),
            Properties::default(),
        ),
        now,
    );
    let Some(SessionEvent::Message { ack: Some(ack), .. }) = session.poll_event() else {
        panic!("expected a message with an ack");
    };
    session.handle_delivered(ack, now);
    assert!(matches!(&packets(&mut session)[..], [Packet::PubRec(_)]));

    session.handle_packet(
        inbound_publish(
            Delivery::AtLeastOnce(id(2)),
            Some("t"),
            Properties::default(),
        ),
        now,
    );
    assert_violation(&mut session, DisconnectReason::ProtocolError);
}

#[test]
fn effective_limits_merge_options_and_connect_properties() {
    let mut merged = config(ProtocolVersion::V5);
    merged.connect_properties = Properties {
        receive_maximum: NonZeroU16::new(2),
        topic_alias_maximum: Some(3),
        maximum_packet_size: NonZeroU32::new(1024),
        session_expiry_interval: Some(60),
        ..Properties::default()
    };
    let limits = merged.effective_limits();
    assert_eq!(limits.receive_maximum.get(), 2);
    assert_eq!(limits.topic_alias_maximum, 3);
    assert_eq!(limits.maximum_packet_size, NonZeroU32::new(1024));
    assert_eq!(limits.session_expiry, 60);

    // Explicit options win over the extra properties.
    merged.receive_maximum = NonZeroU16::new(5).unwrap();
    merged.topic_alias_maximum = 4;
    merged.max_packet_size = NonZeroU32::new(4096);
    merged.session_expiry = Some(30);
    let limits = merged.effective_limits();
    assert_eq!(limits.receive_maximum.get(), 5);
    assert_eq!(limits.topic_alias_maximum, 4);
    assert_eq!(limits.maximum_packet_size, NonZeroU32::new(4096));
    assert_eq!(limits.session_expiry, 30);

    let connect = merged.connect_packet();
    assert_eq!(connect.properties.receive_maximum, NonZeroU16::new(5));
    assert_eq!(connect.properties.topic_alias_maximum, Some(4));
    assert_eq!(
        connect.properties.maximum_packet_size,
        NonZeroU32::new(4096)
    );
    assert_eq!(connect.properties.session_expiry_interval, Some(30));
}

/// Returns a v5 session connected with `extra` as its CONNECT properties.
fn connected_with_properties(extra: Properties, now: Instant) -> Session<MemoryStore> {
    let mut with_extra = config(ProtocolVersion::V5);
    with_extra.connect_properties = extra;
    connected_with(with_extra, Properties::default(), now)
}

#[test]
fn connect_properties_limits_enforced() {
    let now = Instant::now();
    let aliases = Properties {
        topic_alias_maximum: Some(2),
        ..Properties::default()
    };
    let alias = |n| Properties {
        topic_alias: NonZeroU16::new(n),
        ..Properties::default()
    };
    let mut session = connected_with_properties(aliases.clone(), now);
    session.handle_packet(
        inbound_publish(Delivery::AtMostOnce, Some("a"), alias(1)),
        now,
    );
    session.handle_packet(inbound_publish(Delivery::AtMostOnce, None, alias(1)), now);
    assert_eq!(events(&mut session).len(), 2);
    assert!(!session.is_closed());
    session.handle_packet(inbound_publish(Delivery::AtMostOnce, None, alias(2)), now);
    assert_violation(&mut session, DisconnectReason::ProtocolError);

    let receive = Properties {
        receive_maximum: NonZeroU16::new(2),
        ..Properties::default()
    };
    let mut session = connected_with_properties(receive, now);
    for packet_id in 1..=3 {
        session.handle_packet(
            inbound_publish(
                Delivery::ExactlyOnce(id(packet_id)),
                Some("t"),
                Properties::default(),
            ),
            now,
        );
    }
    assert_violation(&mut session, DisconnectReason::ReceiveMaximumExceeded);

    let size = Properties {
        maximum_packet_size: NonZeroU32::new(1024),
        ..Properties::default()
    };
    let mut session = connected_with_properties(size, now);
    let Packet::Publish(small) =
        inbound_publish(Delivery::AtMostOnce, Some("t"), Properties::default())
    else {
        unreachable!()
    };
    let big = Publish {
        payload: Bytes::from(vec![b'x'; 2000]),
        ..small.clone()
    };
    session.handle_packet(Packet::Publish(small), now);
    assert_eq!(events(&mut session).len(), 1);
    session.handle_packet(Packet::Publish(big), now);
    assert_violation(&mut session, DisconnectReason::PacketTooLarge);
}

#[test]
fn check_disconnect_rejects_client_rule_breaks() {
    let mut plain = config(ProtocolVersion::V5);
    let disconnect = |reason, session_expiry_interval| Disconnect {
        reason,
        properties: Properties {
            session_expiry_interval,
            ..Properties::default()
        }
        .into(),
    };
    assert!(plain
        .check_disconnect(&disconnect(DisconnectReason::NormalDisconnection, None))
        .is_ok());
    assert!(plain
        .check_disconnect(&disconnect(
            DisconnectReason::DisconnectWithWillMessage,
            Some(0)
        ))
        .is_ok());
    for reason in [
        DisconnectReason::ServerShuttingDown,
        DisconnectReason::SessionTakenOver,
        DisconnectReason::KeepAliveTimeout,
        DisconnectReason::UseAnotherServer,
    ] {
        assert!(
            matches!(
                plain.check_disconnect(&disconnect(reason, None)),
                Err(RequestError::Invalid(_))
            ),
            "{reason:?}"
        );
    }
    assert!(matches!(
        plain.check_disconnect(&disconnect(DisconnectReason::NormalDisconnection, Some(60))),
        Err(RequestError::Invalid(_))
    ));

    plain.session_expiry = Some(10);
    assert!(plain
        .check_disconnect(&disconnect(DisconnectReason::NormalDisconnection, Some(60)))
        .is_ok());

    let v3 = config(ProtocolVersion::V3_1_1);
    assert!(v3
        .check_disconnect(&disconnect(DisconnectReason::ServerShuttingDown, Some(60)))
        .is_ok());
}

#[test]
fn invalid_disconnect_corrected_before_sending() {
    let now = Instant::now();
    let cases = [
        (
            DisconnectReason::ServerShuttingDown,
            None,
            DisconnectReason::UnspecifiedError,
        ),
        (
            DisconnectReason::DisconnectWithWillMessage,
            Some(60),
            DisconnectReason::DisconnectWithWillMessage,
        ),
        (
            DisconnectReason::SessionTakenOver,
            Some(60),
            DisconnectReason::UnspecifiedError,
        ),
    ];
    for (requested, session_expiry_interval, sent) in cases {
        let mut session = connected(ProtocolVersion::V5, now);
        let disconnect = Disconnect {
            reason: requested,
            properties: Properties {
                session_expiry_interval,
                ..Properties::default()
            }
            .into(),
        };
        session.handle_disconnect(disconnect, now);
        let packets = packets(&mut session);
        let [Packet::Disconnect(disconnect)] = &packets[..] else {
            panic!("expected DISCONNECT, got {packets:?}");
        };
        assert_eq!(disconnect.reason, sent, "{requested:?}");
        assert_eq!(disconnect.properties.session_expiry_interval, None);
    }

    // With a Session Expiry Interval in CONNECT, DISCONNECT may change it.
    let mut expiring = config(ProtocolVersion::V5);
    expiring.session_expiry = Some(10);
    let mut session = connected_with(expiring, Properties::default(), now);
    let disconnect = Disconnect {
        reason: DisconnectReason::NormalDisconnection,
        properties: Properties {
            session_expiry_interval: Some(60),
            ..Properties::default()
        }
        .into(),
    };
    session.handle_disconnect(disconnect.clone(), now);
    assert_eq!(packets(&mut session), [Packet::Disconnect(disconnect)]);
}

/// Arbitrary inputs in arbitrary order: the session must never panic, answer each
/// request at most once, respect the in-flight window, and stay silent once closed.
mod arbitrary_inputs {
    use std::collections::HashSet;

    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    #[allow(clippy::large_enum_variant)] // Test input; size does not matter.
    enum Input {
        Packet(Packet),
        Request(u8, QoS),
        Delivered(usize),
        Timeout(u64),
        Disconnect,
    }

    fn packet_id() -> impl Strategy<Value = PacketId> {
        (1_u16..=4).prop_map(id)
    }

    fn pub_ack_reason() -> impl Strategy<Value = PubAckReason> {
        prop_oneof![
            Just(PubAckReason::Success),
            Just(PubAckReason::UnspecifiedError)
        ]
    }

    fn delivery() -> impl Strategy<Value = Delivery> {
        prop_oneof![
            Just(Delivery::AtMostOnce),
            packet_id().prop_map(Delivery::AtLeastOnce),
            packet_id().prop_map(Delivery::ExactlyOnce),
        ]
    }

    fn packet() -> impl Strategy<Value = Packet> {
        let properties = Properties::default;
        prop_oneof![
            any::<bool>().prop_map(move |present| connack(
                present,
                ConnectReason::Success,
                properties()
            )),
            (packet_id(), pub_ack_reason()).prop_map(move |(packet_id, reason)| Packet::PubAck(
                PubAck {
                    packet_id,
                    reason,
                    properties: properties().into()
                }
            )),
            (packet_id(), pub_ack_reason()).prop_map(move |(packet_id, reason)| Packet::PubRec(
                PubRec {
                    packet_id,
                    reason,
                    properties: properties().into()
                }
            )),
            packet_id().prop_map(move |packet_id| Packet::PubRel(PubRel {
                packet_id,
                reason: PubCompReason::Success,
                properties: properties().into()
            })),
            packet_id().prop_map(move |packet_id| Packet::PubComp(PubComp {
                packet_id,
                reason: PubCompReason::Success,
                properties: properties().into()
            })),
            (packet_id(), 0_usize..3).prop_map(move |(packet_id, count)| Packet::SubAck(SubAck {
                packet_id,
                reasons: vec![SubAckReason::GrantedQoS1; count],
                properties: properties().into()
            })),
            (packet_id(), 0_usize..3).prop_map(move |(packet_id, count)| Packet::UnsubAck(
                UnsubAck {
                    packet_id,
                    reasons: vec![crate::codec::UnsubAckReason::Success; count],
                    properties: properties().into()
                }
            )),
            (delivery(), any::<bool>(), 0_u16..3).prop_map(|(delivery, with_topic, alias)| {
                let properties = Properties {
                    topic_alias: NonZeroU16::new(alias),
                    ..Properties::default()
                };
                inbound_publish(delivery, with_topic.then_some("t/x"), properties)
            }),
            Just(Packet::PingResp),
            Just(Packet::PingReq),
        ]
    }

    fn input() -> impl Strategy<Value = Input> {
        let qos = prop_oneof![
            Just(QoS::AtMostOnce),
            Just(QoS::AtLeastOnce),
            Just(QoS::ExactlyOnce)
        ];
        prop_oneof![
            6 => packet().prop_map(Input::Packet),
            3 => (0_u8..3, qos).prop_map(|(kind, qos)| Input::Request(kind, qos)),
            2 => (0_usize..8).prop_map(Input::Delivered),
            1 => (0_u64..200).prop_map(Input::Timeout),
            1 => Just(Input::Disconnect),
        ]
    }

    fn request(kind: u8, qos: QoS, token: u64) -> QueuedRequest {
        match kind {
            0 => publish_request(token, qos, b"x"),
            1 => subscribe_request(token, &["t/#", "u"]),
            _ => unsubscribe_request(token),
        }
    }

    proptest! {
        #[test]
        fn session_survives_arbitrary_inputs(inputs in vec(input(), 0..80), v5 in any::<bool>()) {
            let protocol = if v5 { ProtocolVersion::V5 } else { ProtocolVersion::V3_1_1 };
            let mut limited = config(protocol);
            limited.max_inflight = NonZeroU16::new(2).unwrap();
            let start = Instant::now();
            let mut session = started(limited, start);
            transmits(&mut session);

            let mut answered = HashSet::new();
            let mut acks = Vec::new();
            let mut closed = false;
            for (step, input) in inputs.into_iter().enumerate() {
                let now = start + Duration::from_millis(step as u64 * 10);
                match input {
                    Input::Packet(packet) => session.handle_packet(packet, now),
                    Input::Request(kind, qos) => {
                        let _ = session.store.push_request(request(kind, qos, step as u64));
                        session.handle_requests_queued(now);
                    }
                    Input::Delivered(index) => {
                        if index < acks.len() {
                            session.handle_delivered(acks.swap_remove(index), now);
                        }
                    }
                    Input::Timeout(seconds) => session.handle_timeout(now + Duration::from_secs(seconds)),
                    Input::Disconnect => session.handle_disconnect(normal_disconnect(), now),
                }

                let sent = transmits(&mut session);
                prop_assert!(!closed || sent.is_empty(), "sent {:?} after closing", sent);
                for event in events(&mut session) {
                    prop_assert!(!closed, "event {:?} after closing", event);
                    match event {
                        SessionEvent::Completed { token, .. } => {
                            prop_assert!(answered.insert(token), "token {:?} answered twice", token);
                        }
                        SessionEvent::Message { ack: Some(ack), .. } => acks.push(ack),
                        SessionEvent::Closed(_) => closed = true,
                        _ => {}
                    }
                }
                prop_assert!(session.store.outbound_publish_len() <= 2, "window exceeded");
            }
        }
    }
}

/// Moves the store of `session` into a new session for the next connection, which the
/// broker accepts with `session_present` and CONNACK `properties`; CONNECT and the
/// events stay to be drained.
fn reconnect_with(
    session: &mut Session<MemoryStore>,
    config: SessionConfig,
    session_present: bool,
    properties: Properties,
    now: Instant,
) -> Session<MemoryStore> {
    let store = std::mem::replace(&mut session.store, MemoryStore::new(1));
    let mut next = Session::new(config, store, now);
    next.handle_transport_connected(now);
    next.handle_packet(
        connack(session_present, ConnectReason::Success, properties),
        now,
    );
    next
}

/// Returns the PUBLISH packets among `sent`.
fn publishes_in(sent: &[Packet]) -> Vec<&Publish> {
    sent.iter()
        .filter_map(|packet| match packet {
            Packet::Publish(publish) => Some(publish),
            _ => None,
        })
        .collect()
}

#[test]
fn resume_resends_in_sent_order() {
    let now = Instant::now();
    let resuming = resuming_config(ProtocolVersion::V5);
    let mut session = connected_with(resuming.clone(), Properties::default(), now);
    session.store.set_packet_id_cursor(id(u16::MAX - 1));
    let requests = [
        (1, QoS::ExactlyOnce, b"a"),
        (2, QoS::AtLeastOnce, b"b"),
        (3, QoS::AtLeastOnce, b"c"),
    ];
    for (token, qos, payload) in requests {
        queue(&mut session, publish_request(token, qos, payload), now);
    }
    packets(&mut session);

    // The QoS 2 flow sent first moves on to PUBCOMP and keeps its place.
    session.handle_packet(
        Packet::PubRec(PubRec {
            packet_id: id(u16::MAX - 1),
            reason: PubAckReason::Success,
            properties: Properties::default().into(),
        }),
        now,
    );
    assert!(matches!(&packets(&mut session)[..], [Packet::PubRel(_)]));

    let mut next = resume(&mut session, resuming, now);
    let sent = packets(&mut next);
    let resent: Vec<(&str, u16)> = sent
        .iter()
        .map(|packet| match packet {
            Packet::Connect(_) => ("CONNECT", 0),
            Packet::PubRel(rel) => ("PUBREL", rel.packet_id.get()),
            Packet::Publish(publish) => ("PUBLISH", publish.delivery.packet_id().unwrap().get()),
            other => panic!("expected CONNECT, PUBREL or PUBLISH, got {other:?}"),
        })
        .collect();
    assert_eq!(
        resent,
        [
            ("CONNECT", 0),
            ("PUBREL", u16::MAX - 1),
            ("PUBLISH", u16::MAX),
            ("PUBLISH", 1),
        ],
        "resends follow the order of first sending across the identifier wrap"
    );
}

#[test]
fn resume_opens_larger_receive_maximum() {
    let now = Instant::now();
    let resuming = resuming_config(ProtocolVersion::V5);
    let limited = Properties {
        receive_maximum: NonZeroU16::new(1),
        ..Properties::default()
    };
    let mut session = connected_with(resuming.clone(), limited, now);
    queue_publishes(&mut session, 3, QoS::AtLeastOnce, now);
    assert_eq!(packets(&mut session).len(), 1, "the first broker allows 1");
    assert_eq!(session.store.queued_len(), 2);

    // The resumed broker allows 3, so the two waiting publishes follow the resend.
    let generous = Properties {
        receive_maximum: NonZeroU16::new(3),
        ..Properties::default()
    };
    let mut next = reconnect_with(&mut session, resuming, true, generous, now);
    let sent = packets(&mut next);
    let publishes = publishes_in(&sent);
    let order: Vec<(u16, bool)> = publishes
        .iter()
        .map(|publish| (publish.delivery.packet_id().unwrap().get(), publish.dup))
        .collect();
    assert_eq!(order, [(1, true), (2, false), (3, false)], "{sent:?}");
    assert_eq!(next.store.queued_len(), 0);
}

#[test]
fn fresh_session_sends_no_old_pubrel() {
    let now = Instant::now();
    let resuming = resuming_config(ProtocolVersion::V5);
    let mut session = connected_with(resuming.clone(), Properties::default(), now);
    queue(
        &mut session,
        publish_request(1, QoS::ExactlyOnce, b"x"),
        now,
    );
    packets(&mut session);
    session.handle_packet(
        Packet::PubRec(PubRec {
            packet_id: id(1),
            reason: PubAckReason::Success,
            properties: Properties::default().into(),
        }),
        now,
    );
    assert!(matches!(&packets(&mut session)[..], [Packet::PubRel(_)]));

    // The broker lost the session, so it has no QoS 2 flow to release [MQTT-3.2.2-5].
    let mut next = reconnect_with(&mut session, resuming, false, Properties::default(), now);
    let sent = packets(&mut next);
    assert!(
        !sent
            .iter()
            .any(|packet| matches!(packet, Packet::PubRel(_))),
        "PUBREL sent to a broker without the session: {sent:?}"
    );
}

#[test]
fn resume_respects_new_receive_maximum() {
    let now = Instant::now();
    let resuming = resuming_config(ProtocolVersion::V5);
    let mut session = connected_with(resuming.clone(), Properties::default(), now);
    queue_publishes(&mut session, 3, QoS::AtLeastOnce, now);
    assert_eq!(packets(&mut session).len(), 3, "the first broker allows 3");

    // The broker resumes the session but now allows one unacknowledged PUBLISH.
    let broker = Properties {
        receive_maximum: NonZeroU16::new(1),
        ..Properties::default()
    };
    let mut next = reconnect_with(&mut session, resuming, true, broker, now);
    let sent = packets(&mut next);
    let resent = publishes_in(&sent);
    assert_eq!(
        resent.len(),
        1,
        "Receive Maximum 1 allows one PUBLISH: {sent:?}"
    );
    assert_eq!(resent[0].delivery, Delivery::AtLeastOnce(id(1)));
    assert!(resent[0].dup);
    assert!(!next.is_closed());

    // Each PUBACK frees the room for the next resend, in the original order.
    for (acked, following) in [(1, 2), (2, 3)] {
        next.handle_packet(puback(id(acked), PubAckReason::Success), now);
        let sent = packets(&mut next);
        let resent = publishes_in(&sent);
        assert_eq!(resent.len(), 1, "after PUBACK {acked}: {sent:?}");
        assert_eq!(resent[0].delivery, Delivery::AtLeastOnce(id(following)));
        assert!(resent[0].dup, "PUBLISH {following} is a resend");
    }
}

/// A limit a broker announces in CONNACK, which the first broker did not set and a
/// resumed session's resent PUBLISH must keep to.
struct NewLimit {
    name: &'static str,
    /// Adjusts the publish made on the first connection.
    request: fn(&mut OutgoingPublish),
    /// The CONNACK properties of the first connection.
    first: Properties,
    /// The CONNACK properties of the resumed connection.
    resumed: Properties,
    /// Returns `true` when `publish` breaks the limit of `resumed`.
    breaks: fn(&Publish) -> bool,
}

#[test]
fn resume_keeps_to_new_connack_limits() {
    let cases = [
        NewLimit {
            name: "Maximum Packet Size",
            request: |publish| publish.payload = Bytes::from_static(&[0; 64]),
            first: Properties::default(),
            resumed: Properties {
                maximum_packet_size: NonZeroU32::new(20),
                ..Properties::default()
            },
            breaks: |publish| {
                let size = crate::codec::encoded_len(
                    &Packet::Publish(publish.clone()),
                    ProtocolVersion::V5,
                );
                size.unwrap() > 20
            },
        },
        NewLimit {
            name: "Topic Alias Maximum",
            request: |publish| publish.properties.topic_alias = NonZeroU16::new(3),
            first: Properties {
                topic_alias_maximum: Some(5),
                ..Properties::default()
            },
            resumed: Properties::default(),
            breaks: |publish| publish.properties.topic_alias.is_some(),
        },
        NewLimit {
            name: "Maximum QoS",
            request: |publish| publish.qos = QoS::ExactlyOnce,
            first: Properties::default(),
            resumed: Properties {
                maximum_qos: Some(QoS::AtLeastOnce),
                ..Properties::default()
            },
            breaks: |publish| publish.delivery.qos() == QoS::ExactlyOnce,
        },
        NewLimit {
            name: "Retain Available",
            request: |publish| publish.retain = true,
            first: Properties::default(),
            resumed: Properties {
                retain_available: Some(false),
                ..Properties::default()
            },
            breaks: |publish| publish.retain,
        },
    ];
    let now = Instant::now();
    let mut broken = Vec::new();
    for case in cases {
        let resuming = resuming_config(ProtocolVersion::V5);
        let mut session = connected_with(resuming.clone(), case.first, now);
        let mut request = publish_request(1, QoS::AtLeastOnce, b"x");
        if let Request::Publish(publish) = &mut request.request {
            (case.request)(publish);
        }
        queue(&mut session, request, now);
        let first = packets(&mut session);
        assert_eq!(publishes_in(&first).len(), 1, "{}: {first:?}", case.name);

        let mut next = reconnect_with(&mut session, resuming, true, case.resumed, now);
        let sent = packets(&mut next);
        if publishes_in(&sent).into_iter().any(case.breaks) {
            broken.push(case.name);
        }
        assert!(!next.is_closed(), "{}: session closed", case.name);
    }
    assert!(
        broken.is_empty(),
        "resent PUBLISH breaks the limit of the resumed connection: {broken:?}"
    );
}

#[test]
fn resume_fails_publish_new_limits_forbid() {
    let now = Instant::now();
    let resuming = resuming_config(ProtocolVersion::V5);
    let first_limits = Properties {
        topic_alias_maximum: Some(5),
        ..Properties::default()
    };
    let mut session = connected_with(resuming.clone(), first_limits, now);
    let exactly_once = publish_request(1, QoS::ExactlyOnce, b"x");
    let mut aliased = publish_request(2, QoS::AtLeastOnce, b"y");
    if let Request::Publish(publish) = &mut aliased.request {
        publish.properties.topic_alias = NonZeroU16::new(3);
    }
    queue(&mut session, exactly_once, now);
    queue(&mut session, aliased, now);
    assert_eq!(publishes_in(&packets(&mut session)).len(), 2);

    // The resumed broker allows QoS 1 at most and no topic aliases.
    let resumed_limits = Properties {
        maximum_qos: Some(QoS::AtLeastOnce),
        ..Properties::default()
    };
    let mut next = reconnect_with(&mut session, resuming, true, resumed_limits, now);
    let sent = packets(&mut next);
    let resent = publishes_in(&sent);
    assert_eq!(
        resent.len(),
        1,
        "only the QoS 1 publish goes again: {sent:?}"
    );
    let Some(only) = resent.first() else {
        unreachable!("one PUBLISH was checked above");
    };
    assert_eq!(only.delivery.packet_id(), Some(id(2)));
    assert!(only.dup);
    assert_eq!(
        only.properties.topic_alias, None,
        "alias of the old connection"
    );
    let done = completed(&events(&mut next));
    assert!(
        matches!(&done[..], [(token, Err(RequestError::Invalid(_)))] if token.0 == 1),
        "the QoS 2 publish fails: {done:?}"
    );
}

#[test]
fn pending_qos2_copy_acked_after_delivery() {
    let now = Instant::now();
    let resuming = resuming_config(ProtocolVersion::V5);
    let mut session = connected_with(resuming.clone(), Properties::default(), now);
    session.handle_packet(qos2(false), now);
    let Some(SessionEvent::Message { ack: Some(ack), .. }) = session.poll_event() else {
        panic!("expected a message with an ack");
    };
    // The message waits in a full mailbox when the connection ends.
    session.handle_handed_over(ack);

    let store = std::mem::replace(&mut session.store, MemoryStore::new(1));
    let mut next = Session::new(resuming, store, now);
    next.handle_delivery_pending(ack);
    next.handle_transport_connected(now);
    next.handle_packet(
        connack(true, ConnectReason::Success, Properties::default()),
        now,
    );
    packets(&mut next);
    events(&mut next);
    next.handle_packet(qos2(true), now);
    assert!(events(&mut next).is_empty(), "the copy is not delivered");
    assert!(
        transmits(&mut next).is_empty(),
        "no PUBREC while the first copy waits"
    );

    next.handle_delivered(ack, now);
    assert!(matches!(&packets(&mut next)[..], [Packet::PubRec(r)] if r.packet_id == id(6)));
    assert_eq!(next.inflight_in(), 1, "awaiting PUBREL");
}
