//! The client against fake brokers that break the protocol on purpose, and against
//! invalid caller input. Each test checks that the client returns a typed error,
//! closes the connection with the right reason (a v5 DISCONNECT where the version has
//! one), replies to every waiting caller once and leaves no actor, task or socket behind.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "support/hostile.rs"]
mod hostile;

use std::num::{NonZeroU16, NonZeroU32};
use std::time::Duration;

use bytes::Bytes;
use hostile::{
    failure, forward, id, inbound, next, puback, pubcomp, pubrec, start, topic, within, Hostile,
    Peer, Resources, Started, STEP,
};
use mqttlink::codec::{
    Auth, AuthReason, ConnectReason, Delivery, Disconnect as DisconnectPacket, DisconnectReason,
    Packet, PacketId, Properties, ProtocolVersion, PubAckReason, PubCompReason, PubRec, PubRel,
    QoS, SubAck, SubAckReason, SubscriptionOptions, TopicFilter, TopicName, UnsubAck,
};
use mqttlink::session::ProtocolViolation;
use mqttlink::{
    ClientError, ClientOptions, ClosedBy, Disconnect, DisconnectCause, Event, Publish, Subscribe,
    Unsubscribe,
};

/// A PUBLISH payload larger than the 1,024-byte Maximum Packet Size some tests announce.
static BIG: [u8; 2000] = [b'x'; 2000];

/// `live_actor_count`, the task count and the open sockets are process-wide, so the
/// tests of this file run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn filter(name: &str) -> TopicFilter {
    name.parse().unwrap()
}

fn options(broker: &Hostile, protocol: ProtocolVersion) -> ClientOptions {
    ClientOptions::from_url(&broker.url())
        .unwrap()
        .client_id("hostile")
        .protocol(protocol)
        .connect_timeout(STEP)
}

/// Starts a client, accepts its connection and replies to CONNECT with `connack`.
async fn connected(
    protocol: ProtocolVersion,
    connack: Properties,
    configure: impl FnOnce(ClientOptions) -> ClientOptions,
) -> (Hostile, Started, Peer) {
    let broker = Hostile::bind().await;
    let mut started = start(configure(options(&broker, protocol)));
    let mut peer = broker.accept().await;
    peer.handshake_with(connack).await;
    assert!(matches!(
        next(&mut started.events).await,
        Event::Connected { .. }
    ));
    (broker, started, peer)
}

/// Expects a PUBLISH and returns its packet identifier (`None` for QoS 0).
async fn expect_publish(peer: &mut Peer) -> Option<PacketId> {
    match peer.recv().await {
        Packet::Publish(publish) => publish.delivery.packet_id(),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

/// Expects a PUBREL for `packet_id` with `reason`.
async fn expect_pubrel(peer: &mut Peer, packet_id: PacketId, reason: PubCompReason) {
    match peer.recv().await {
        Packet::PubRel(rel) => assert_eq!((rel.packet_id, rel.reason), (packet_id, reason)),
        other => panic!("expected PUBREL, got {other:?}"),
    }
}

fn is_violation(error: &ClientError) -> bool {
    matches!(error, ClientError::ProtocolViolation(_))
}

// ---------------------------------------------------------------------------------------
// Framing and sizes
// ---------------------------------------------------------------------------------------

#[actix_rt::test]
async fn connack_in_single_byte_writes() {
    let _serial = SERIAL.lock().await;
    let baseline = Resources::now();
    let broker = Hostile::bind().await;
    let mut started = start(options(&broker, ProtocolVersion::V5));
    let mut peer = broker.accept().await;
    peer.expect_connect().await;

    let properties = Properties {
        receive_maximum: NonZeroU16::new(7),
        reason_string: Some("split".into()),
        ..Properties::default()
    };
    let connack = peer.connack_bytes(properties);
    for byte in &connack {
        peer.send_raw(&[*byte]).await;
        tokio::task::yield_now().await;
    }
    match next(&mut started.events).await {
        Event::Connected { properties, .. } => {
            assert_eq!(properties.receive_maximum, NonZeroU16::new(7));
        }
        other => panic!("expected Connected, got {other:?}"),
    }

    within(started.client.disconnect(Disconnect::new()))
        .await
        .unwrap();
    peer.expect_disconnect_with(DisconnectReason::NormalDisconnection)
        .await;
    drop(started);
    drop(peer);
    drop(broker);
    baseline.assert_back().await;
}

#[actix_rt::test]
async fn huge_remaining_length_rejected_from_header() {
    let _serial = SERIAL.lock().await;
    let baseline = Resources::now();
    let (broker, mut started, mut peer) =
        connected(ProtocolVersion::V5, Properties::default(), |o| o).await;

    // PUBLISH announcing 268,435,455 bytes, then a trickle of a few body bytes: the
    // 16 MiB default limit rejects it from the fixed header alone.
    peer.send_raw(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F]).await;
    peer.send_raw(&[0x00, 0x01]).await;
    let _ = peer.try_send_raw(b"a").await;
    peer.expect_disconnect_with(DisconnectReason::PacketTooLarge)
        .await;
    let error = failure(&mut started.events).await;
    assert!(
        matches!(
            &error,
            ClientError::ProtocolViolation(ProtocolViolation::Decode(
                mqttlink::codec::DecodeError::PacketTooLarge { .. }
            ))
        ),
        "{error:?}"
    );
    drop(started);
    drop(peer);
    drop(broker);
    baseline.assert_back().await;
}

#[actix_rt::test]
async fn publish_over_client_maximum_rejected() {
    let _serial = SERIAL.lock().await;
    let baseline = Resources::now();
    let (broker, mut started, mut peer) =
        connected(ProtocolVersion::V5, Properties::default(), |o| {
            o.max_packet_size(1024)
        })
        .await;

    peer.send(&inbound(Delivery::AtMostOnce, "big", &BIG)).await;
    peer.expect_disconnect_with(DisconnectReason::PacketTooLarge)
        .await;
    assert!(is_violation(&failure(&mut started.events).await));
    drop(started);
    drop(peer);
    drop(broker);
    baseline.assert_back().await;
}

#[actix_rt::test]
async fn many_tiny_packets_in_one_write() {
    let _serial = SERIAL.lock().await;
    let (_broker, started, mut peer) =
        connected(ProtocolVersion::V3_1_1, Properties::default(), |o| o).await;

    // 100,000 unsolicited PINGRESP packets (2 bytes each) in one write.
    let flood = [0xD0_u8, 0x00].repeat(100_000);
    peer.send_raw(&flood).await;

    let publish = Publish::new(topic("after/flood"), "x").qos(QoS::AtLeastOnce);
    let reply = started.client.try_publish(publish).unwrap();
    let packet_id = expect_publish(&mut peer).await.unwrap();
    peer.send(&puback(packet_id)).await;
    assert!(within(reply).await.is_ok());

    let stats = within(started.client.stats()).await.unwrap();
    assert_eq!(stats.packets_in, 100_002, "CONNACK, the flood and PUBACK");
    within(started.client.disconnect(Disconnect::new()))
        .await
        .unwrap();
}

#[actix_rt::test]
async fn invalid_utf8_topic_is_malformed() {
    let _serial = SERIAL.lock().await;
    let (_broker, mut started, mut peer) =
        connected(ProtocolVersion::V5, Properties::default(), |o| o).await;

    // QoS 0 PUBLISH, topic length 2 with bytes FF FE, empty properties.
    peer.send_raw(&[0x30, 0x05, 0x00, 0x02, 0xFF, 0xFE, 0x00])
        .await;
    peer.expect_disconnect_with(DisconnectReason::MalformedPacket)
        .await;
    assert!(is_violation(&failure(&mut started.events).await));
}

// ---------------------------------------------------------------------------------------
// Acknowledgements that do not fit
// ---------------------------------------------------------------------------------------

#[actix_rt::test]
async fn unknown_and_repeated_acks_tolerated() {
    let _serial = SERIAL.lock().await;
    let (_broker, started, mut peer) =
        connected(ProtocolVersion::V5, Properties::default(), |o| o).await;

    for packet in [puback(id(900)), pubrec(id(901)), pubcomp(id(902))] {
        peer.send(&packet).await;
    }
    // Only the PUBREC gets a reply, because the broker waits for a PUBREL after it.
    expect_pubrel(&mut peer, id(901), PubCompReason::PacketIdentifierNotFound).await;

    let reply = started
        .client
        .try_publish(Publish::new(topic("t"), "1").qos(QoS::AtLeastOnce))
        .unwrap();
    let packet_id = expect_publish(&mut peer).await.unwrap();
    peer.send(&puback(packet_id)).await;
    peer.send(&puback(packet_id)).await;
    let outcome = within(reply).await.unwrap();
    assert_eq!(outcome.reason, Some(PubAckReason::Success));

    // The connection is still usable after the repeated PUBACK.
    let reply = started
        .client
        .try_publish(Publish::new(topic("t"), "2").qos(QoS::AtLeastOnce))
        .unwrap();
    let packet_id = expect_publish(&mut peer).await.unwrap();
    peer.send(&puback(packet_id)).await;
    assert!(within(reply).await.is_ok());

    within(started.client.disconnect(Disconnect::new()))
        .await
        .unwrap();
    peer.expect_disconnect_with(DisconnectReason::NormalDisconnection)
        .await;
}

/// Sends one QoS `qos` publish, replies to it with `answer(packet_id)` and expects the
/// client to close with Protocol Error and fail the caller.
async fn wrong_ack_closes(qos: QoS, answer: fn(PacketId) -> Packet) {
    let (_broker, mut started, mut peer) =
        connected(ProtocolVersion::V5, Properties::default(), |o| o).await;
    let reply = started
        .client
        .try_publish(Publish::new(topic("t"), "x").qos(qos))
        .unwrap();
    let packet_id = expect_publish(&mut peer).await.unwrap();
    peer.send(&answer(packet_id)).await;
    peer.expect_disconnect_with(DisconnectReason::ProtocolError)
        .await;
    let error = within(reply).await.unwrap_err();
    assert!(is_violation(&error), "{error:?}");
    assert!(is_violation(&failure(&mut started.events).await));
}

#[actix_rt::test]
async fn pubrec_for_qos1_closes() {
    let _serial = SERIAL.lock().await;
    let baseline = Resources::now();
    wrong_ack_closes(QoS::AtLeastOnce, pubrec).await;
    baseline.assert_back().await;
}

#[actix_rt::test]
async fn puback_for_qos2_closes() {
    let _serial = SERIAL.lock().await;
    wrong_ack_closes(QoS::ExactlyOnce, puback).await;
}

#[actix_rt::test]
async fn pubcomp_before_pubrec_closes() {
    let _serial = SERIAL.lock().await;
    wrong_ack_closes(QoS::ExactlyOnce, pubcomp).await;
}

/// Subscribes to `filters` and returns the pending reply and the SUBSCRIBE's identifier.
async fn subscribe_pending(
    started: &Started,
    peer: &mut Peer,
    filters: &[&str],
) -> (
    tokio::task::JoinHandle<Result<mqttlink::SubscribeOutcome, ClientError>>,
    PacketId,
) {
    let (recipient, _messages) = forward::<mqttlink::Message>();
    let mut request = Subscribe::new(recipient.recipient());
    for name in filters {
        request = request.filter(
            filter(name),
            SubscriptionOptions::with_qos(QoS::AtLeastOnce),
        );
    }
    let client = started.client.clone();
    let reply = tokio::task::spawn_local(async move { client.subscribe(request).await });
    let packet_id = match peer.recv().await {
        Packet::Subscribe(subscribe) => subscribe.packet_id,
        other => panic!("expected SUBSCRIBE, got {other:?}"),
    };
    (reply, packet_id)
}

#[actix_rt::test]
async fn suback_with_wrong_code_count_closes() {
    let _serial = SERIAL.lock().await;
    let (_broker, mut started, mut peer) =
        connected(ProtocolVersion::V5, Properties::default(), |o| o).await;
    let (reply, packet_id) = subscribe_pending(&started, &mut peer, &["a", "b"]).await;
    let ack = SubAck {
        packet_id,
        reasons: vec![SubAckReason::GrantedQoS1],
        properties: Properties::default().into(),
    };
    peer.send(&Packet::SubAck(ack)).await;
    peer.expect_disconnect_with(DisconnectReason::ProtocolError)
        .await;
    let error = within(reply).await.unwrap().unwrap_err();
    assert!(
        matches!(
            &error,
            ClientError::ProtocolViolation(ProtocolViolation::ReasonCountMismatch { .. })
        ),
        "{error:?}"
    );
    assert!(is_violation(&failure(&mut started.events).await));
}

#[actix_rt::test]
async fn suback_for_unsubscribe_id_closes() {
    let _serial = SERIAL.lock().await;
    let (_broker, mut started, mut peer) =
        connected(ProtocolVersion::V5, Properties::default(), |o| o).await;
    let client = started.client.clone();
    let reply = tokio::task::spawn_local(async move {
        client
            .unsubscribe(Unsubscribe::new().filter(filter("a")))
            .await
    });
    let packet_id = match peer.recv().await {
        Packet::Unsubscribe(unsubscribe) => unsubscribe.packet_id,
        other => panic!("expected UNSUBSCRIBE, got {other:?}"),
    };
    let ack = SubAck {
        packet_id,
        reasons: vec![SubAckReason::GrantedQoS0],
        properties: Properties::default().into(),
    };
    peer.send(&Packet::SubAck(ack)).await;
    peer.expect_disconnect_with(DisconnectReason::ProtocolError)
        .await;
    let error = within(reply).await.unwrap().unwrap_err();
    assert!(is_violation(&error), "{error:?}");
    assert!(is_violation(&failure(&mut started.events).await));
}

#[actix_rt::test]
async fn unsuback_for_unknown_id_closes() {
    let _serial = SERIAL.lock().await;
    let (_broker, mut started, mut peer) =
        connected(ProtocolVersion::V5, Properties::default(), |o| o).await;
    let ack = UnsubAck {
        packet_id: id(4321),
        reasons: vec![mqttlink::codec::UnsubAckReason::Success],
        properties: Properties::default().into(),
    };
    peer.send(&Packet::UnsubAck(ack)).await;
    peer.expect_disconnect_with(DisconnectReason::ProtocolError)
        .await;
    assert!(is_violation(&failure(&mut started.events).await));
}

// ---------------------------------------------------------------------------------------
// Handshake and connection-level faults
// ---------------------------------------------------------------------------------------

#[actix_rt::test]
async fn second_connack_closes() {
    let _serial = SERIAL.lock().await;
    let (_broker, mut started, mut peer) =
        connected(ProtocolVersion::V5, Properties::default(), |o| o).await;
    let connack = peer.connack_bytes(Properties::default());
    peer.send_raw(&connack).await;
    peer.expect_disconnect_with(DisconnectReason::ProtocolError)
        .await;
    let error = failure(&mut started.events).await;
    assert!(
        matches!(
            &error,
            ClientError::ProtocolViolation(ProtocolViolation::SecondConnAck)
        ),
        "{error:?}"
    );
}

#[actix_rt::test]
async fn packet_before_connack_closes() {
    let _serial = SERIAL.lock().await;
    let baseline = Resources::now();
    for protocol in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let broker = Hostile::bind().await;
        let mut started = start(options(&broker, protocol));
        let mut peer = broker.accept().await;
        peer.expect_connect().await;
        let reply = started
            .client
            .try_publish(Publish::new(topic("t"), "x"))
            .unwrap();
        peer.send(&puback(id(1))).await;
        let packets = peer.until_closed().await;
        if protocol.is_v5() {
            assert!(
                matches!(
                    packets.as_slice(),
                    [Packet::Disconnect(DisconnectPacket {
                        reason: DisconnectReason::ProtocolError,
                        ..
                    })]
                ),
                "{packets:?}"
            );
        } else {
            assert!(packets.is_empty(), "{packets:?}");
        }
        let error = within(reply).await.unwrap_err();
        assert!(
            matches!(
                &error,
                ClientError::ProtocolViolation(ProtocolViolation::PacketBeforeConnAck(_))
            ),
            "{error:?}"
        );
        assert!(is_violation(&failure(&mut started.events).await));
    }
    baseline.assert_back().await;
}

#[actix_rt::test]
async fn broker_disconnect_reason_reaches_callers() {
    let _serial = SERIAL.lock().await;
    let baseline = Resources::now();
    let (broker, mut started, mut peer) =
        connected(ProtocolVersion::V5, Properties::default(), |o| o).await;
    let reply = started
        .client
        .try_publish(Publish::new(topic("t"), "x").qos(QoS::AtLeastOnce))
        .unwrap();
    expect_publish(&mut peer).await;

    let properties = Properties {
        server_reference: Some("other.example:1883".into()),
        reason_string: Some("moving".into()),
        ..Properties::default()
    };
    let disconnect = DisconnectPacket {
        reason: DisconnectReason::UseAnotherServer,
        properties: properties.into(),
    };
    peer.send(&Packet::Disconnect(disconnect)).await;
    let packets = peer.until_closed().await;
    assert!(packets.is_empty(), "client answered with {packets:?}");

    let error = within(reply).await.unwrap_err();
    match &error {
        ClientError::ConnectionClosed(ClosedBy::Broker {
            reason,
            reason_string,
            ..
        }) => {
            assert_eq!(*reason, DisconnectReason::UseAnotherServer);
            assert_eq!(reason_string.as_deref(), Some("moving"));
        }
        other => panic!("expected ConnectionClosed(Broker), got {other:?}"),
    }
    let event = failure(&mut started.events).await;
    assert!(matches!(
        event,
        ClientError::ConnectionClosed(ClosedBy::Broker { .. })
    ));
    drop(started);
    drop(peer);
    drop(broker);
    baseline.assert_back().await;
}

#[actix_rt::test]
async fn unrequested_auth_closes() {
    let _serial = SERIAL.lock().await;
    let (_broker, mut started, mut peer) =
        connected(ProtocolVersion::V5, Properties::default(), |o| o).await;
    let auth = Auth {
        reason: AuthReason::ContinueAuthentication,
        properties: Properties {
            authentication_method: Some("SCRAM-SHA-1".into()),
            ..Properties::default()
        }
        .into(),
    };
    peer.send(&Packet::Auth(auth)).await;
    peer.expect_disconnect_with(DisconnectReason::ProtocolError)
        .await;
    assert!(is_violation(&failure(&mut started.events).await));
}

#[actix_rt::test]
async fn half_close_after_connack_fails_callers() {
    let _serial = SERIAL.lock().await;
    let baseline = Resources::now();
    let (broker, mut started, mut peer) =
        connected(ProtocolVersion::V3_1_1, Properties::default(), |o| o).await;
    let reply = started
        .client
        .try_publish(Publish::new(topic("t"), "x").qos(QoS::AtLeastOnce))
        .unwrap();
    expect_publish(&mut peer).await;
    peer.shutdown_write().await;

    let error = within(reply).await.unwrap_err();
    assert!(
        matches!(&error, ClientError::ConnectionClosed(ClosedBy::EndOfStream)),
        "{error:?}"
    );
    assert!(matches!(
        failure(&mut started.events).await,
        ClientError::ConnectionClosed(ClosedBy::EndOfStream)
    ));
    assert!(peer.until_closed().await.is_empty());
    drop(started);
    drop(peer);
    drop(broker);
    baseline.assert_back().await;
}

#[actix_rt::test]
async fn reset_mid_packet_fails_callers() {
    let _serial = SERIAL.lock().await;
    let baseline = Resources::now();
    let (broker, mut started, mut peer) =
        connected(ProtocolVersion::V5, Properties::default(), |o| o).await;
    let reply = started
        .client
        .try_publish(Publish::new(topic("t"), "x").qos(QoS::ExactlyOnce))
        .unwrap();
    expect_publish(&mut peer).await;
    // The first half of a PUBLISH, then RST.
    peer.send_raw(&[0x30, 0x20, 0x00, 0x05, b'a', b'b']).await;
    peer.reset();

    let error = within(reply).await.unwrap_err();
    assert!(
        matches!(&error, ClientError::ConnectionClosed(_)),
        "{error:?}"
    );
    assert!(matches!(
        failure(&mut started.events).await,
        ClientError::ConnectionClosed(_)
    ));
    drop(started);
    drop(broker);
    baseline.assert_back().await;
}

#[actix_rt::test]
async fn unanswered_server_keep_alive_closes() {
    let _serial = SERIAL.lock().await;
    let connack = Properties {
        server_keep_alive: Some(1),
        ..Properties::default()
    };
    // The client requests 60 s; the broker's 1 s wins.
    let (_broker, mut started, mut peer) = connected(ProtocolVersion::V5, connack, |o| {
        o.keep_alive(Duration::from_secs(60))
    })
    .await;
    assert!(matches!(peer.recv().await, Packet::PingReq));
    let error = failure(&mut started.events).await;
    assert!(matches!(&error, ClientError::KeepAliveTimeout), "{error:?}");
    assert!(peer.until_closed().await.is_empty());
}

// ---------------------------------------------------------------------------------------
// Inbound messages
// ---------------------------------------------------------------------------------------

/// Sends `bytes` after CONNACK and expects DISCONNECT with `reason`.
async fn inbound_closes(
    bytes: &[u8],
    configure: impl FnOnce(ClientOptions) -> ClientOptions,
    reason: DisconnectReason,
) {
    let (_broker, mut started, mut peer) =
        connected(ProtocolVersion::V5, Properties::default(), configure).await;
    peer.send_raw(bytes).await;
    peer.expect_disconnect_with(reason).await;
    assert!(is_violation(&failure(&mut started.events).await));
}

#[actix_rt::test]
async fn topic_alias_zero_closes() {
    let _serial = SERIAL.lock().await;
    // PUBLISH "a" with property Topic Alias (0x23) = 0.
    let bytes = [0x30, 0x07, 0x00, 0x01, b'a', 0x03, 0x23, 0x00, 0x00];
    inbound_closes(&bytes, |o| o, DisconnectReason::TopicAliasInvalid).await;
}

#[actix_rt::test]
async fn topic_alias_above_maximum_closes() {
    let _serial = SERIAL.lock().await;
    // Topic Alias 3 while the client announced a Topic Alias Maximum of 2.
    let bytes = [0x30, 0x07, 0x00, 0x01, b'a', 0x03, 0x23, 0x00, 0x03];
    let configure = |o: ClientOptions| {
        o.connect_properties(Properties {
            topic_alias_maximum: Some(2),
            ..Properties::default()
        })
    };
    inbound_closes(&bytes, configure, DisconnectReason::TopicAliasInvalid).await;
}

#[actix_rt::test]
async fn qos2_duplicate_delivered_once() {
    let _serial = SERIAL.lock().await;
    let (_broker, started, mut peer) =
        connected(ProtocolVersion::V5, Properties::default(), |o| o).await;
    let (recipient, mut messages) = forward::<mqttlink::Message>();
    started.client.set_default_recipient(recipient.recipient());

    let first = inbound(Delivery::ExactlyOnce(id(5)), "q2", b"once");
    peer.send(&first).await;
    assert!(matches!(peer.recv().await, Packet::PubRec(r) if r.packet_id == id(5)));
    let Packet::Publish(mut again) = first else {
        unreachable!()
    };
    again.dup = true;
    peer.send(&Packet::Publish(again)).await;
    assert!(matches!(peer.recv().await, Packet::PubRec(r) if r.packet_id == id(5)));
    let release = PubRel {
        packet_id: id(5),
        reason: PubCompReason::Success,
        properties: Properties::default().into(),
    };
    peer.send(&Packet::PubRel(release)).await;
    assert!(
        matches!(peer.recv().await, Packet::PubComp(c) if c.packet_id == id(5) && c.reason == PubCompReason::Success)
    );

    assert_eq!(&next(&mut messages).await.payload[..], b"once");
    // A QoS 0 marker sent after the flow arrives next, so no second copy was queued.
    peer.send(&inbound(Delivery::AtMostOnce, "q2", b"marker"))
        .await;
    assert_eq!(&next(&mut messages).await.payload[..], b"marker");
    within(started.client.disconnect(Disconnect::new()))
        .await
        .unwrap();
}

#[actix_rt::test]
async fn unknown_qos2_ids_answered() {
    let _serial = SERIAL.lock().await;
    for (protocol, expected) in [
        (ProtocolVersion::V5, PubCompReason::PacketIdentifierNotFound),
        (ProtocolVersion::V3_1_1, PubCompReason::Success),
    ] {
        let (_broker, started, mut peer) = connected(protocol, Properties::default(), |o| o).await;
        let release = PubRel {
            packet_id: id(77),
            reason: PubCompReason::Success,
            properties: Properties::default().into(),
        };
        peer.send(&Packet::PubRel(release)).await;
        match peer.recv().await {
            Packet::PubComp(comp) => {
                assert_eq!(comp.packet_id, id(77));
                assert_eq!(comp.reason, expected, "{protocol:?}");
            }
            other => panic!("expected PUBCOMP, got {other:?}"),
        }
        peer.send(&pubrec(id(78))).await;
        expect_pubrel(&mut peer, id(78), expected).await;
        within(started.client.disconnect(Disconnect::new()))
            .await
            .unwrap();
    }
}

/// Checks the PUBCOMP a broker sends in reply to the PUBREL for an unknown PUBREC. The
/// client keeps that identifier out of use until the PUBCOMP, so the PUBCOMP cannot
/// reach a new flow: the publish sent meanwhile takes another identifier and
/// completes, and the connection stays up.
#[actix_rt::test]
async fn released_id_pubcomp_keeps_connection() {
    let _serial = SERIAL.lock().await;
    let (_broker, mut started, mut peer) =
        connected(ProtocolVersion::V5, Properties::default(), |o| o).await;

    peer.send(&pubrec(id(1))).await;
    expect_pubrel(&mut peer, id(1), PubCompReason::PacketIdentifierNotFound).await;

    let reply = started
        .client
        .try_publish(Publish::new(topic("t"), "after release").qos(QoS::AtLeastOnce))
        .unwrap();
    let packet_id = expect_publish(&mut peer).await.unwrap();
    assert_ne!(packet_id, id(1), "the released identifier is still in use");

    // The PUBCOMP for the PUBREL crosses the new PUBLISH on the wire.
    peer.send(&pubcomp(id(1))).await;
    peer.send(&puback(packet_id)).await;
    let outcome = within(reply).await;
    assert!(outcome.is_ok(), "publish failed: {outcome:?}");
    assert!(
        started.events.try_recv().is_err(),
        "no event expected while the connection stays up"
    );

    within(started.client.disconnect(Disconnect::new()))
        .await
        .unwrap();
    peer.expect_disconnect_with(DisconnectReason::NormalDisconnection)
        .await;
}

// ---------------------------------------------------------------------------------------
// Flow control
// ---------------------------------------------------------------------------------------

#[actix_rt::test]
async fn server_receive_maximum_one_respected() {
    let _serial = SERIAL.lock().await;
    let connack = Properties {
        receive_maximum: NonZeroU16::new(1),
        ..Properties::default()
    };
    let (_broker, started, mut peer) = connected(ProtocolVersion::V5, connack, |o| o).await;

    let replies: Vec<_> = (0..50)
        .map(|index| {
            let publish = Publish::new(topic("rm"), format!("{index}")).qos(QoS::AtLeastOnce);
            started.client.try_publish(publish).unwrap()
        })
        .collect();
    for _ in 0..50 {
        let packet_id = expect_publish(&mut peer).await.unwrap();
        let stats = within(started.client.stats()).await.unwrap();
        assert_eq!(stats.inflight_out, 1, "one publish in flight at a time");
        peer.send(&puback(packet_id)).await;
    }
    for reply in replies {
        assert_eq!(
            within(reply).await.unwrap().reason,
            Some(PubAckReason::Success)
        );
    }
    within(started.client.disconnect(Disconnect::new()))
        .await
        .unwrap();
    peer.expect_disconnect_with(DisconnectReason::NormalDisconnection)
        .await;
}

#[actix_rt::test]
async fn broker_exceeding_receive_maximum_closes() {
    let _serial = SERIAL.lock().await;
    let (_broker, mut started, mut peer) =
        connected(ProtocolVersion::V5, Properties::default(), |o| {
            o.receive_maximum(2)
        })
        .await;
    // Three QoS 2 messages, never released: the PUBRECs keep all three unacknowledged.
    for number in 1..=3 {
        peer.send(&inbound(Delivery::ExactlyOnce(id(number)), "rm", b"x"))
            .await;
    }
    let packets = peer.until_closed().await;
    assert!(
        matches!(
            packets.last(),
            Some(Packet::Disconnect(DisconnectPacket {
                reason: DisconnectReason::ReceiveMaximumExceeded,
                ..
            }))
        ),
        "{packets:?}"
    );
    assert!(is_violation(&failure(&mut started.events).await));
}

// ---------------------------------------------------------------------------------------
// Caller input
// ---------------------------------------------------------------------------------------

#[test]
fn invalid_topics_rejected_by_parse() {
    let long = "a".repeat(65_536);
    for name in ["", "a/+", "a/#", "#", "a\0b", long.as_str()] {
        assert!(name.parse::<TopicName>().is_err(), "topic {name:?}");
    }
    for name in ["", "a/#/b", "a#", "a/b+", "a\0b", long.as_str()] {
        assert!(name.parse::<TopicFilter>().is_err(), "filter {name:?}");
    }
    assert!("a".repeat(65_535).parse::<TopicName>().is_ok());
}

#[actix_rt::test]
async fn broker_limits_reject_before_sending() {
    let _serial = SERIAL.lock().await;
    let connack = Properties {
        maximum_qos: Some(QoS::AtLeastOnce),
        retain_available: Some(false),
        maximum_packet_size: NonZeroU32::new(200),
        ..Properties::default()
    };
    let (_broker, started, mut peer) = connected(ProtocolVersion::V5, connack, |o| o).await;
    let client = &started.client;

    let qos2 = client.publish(Publish::new(topic("t"), "x").qos(QoS::ExactlyOnce));
    assert!(matches!(
        within(qos2).await,
        Err(ClientError::InvalidRequest(_))
    ));
    let retained = client.publish(Publish::new(topic("t"), "x").retain(true));
    assert!(matches!(
        within(retained).await,
        Err(ClientError::InvalidRequest(_))
    ));
    let big = client.publish(Publish::new(topic("t"), vec![0_u8; 300]));
    match within(big).await {
        Err(ClientError::PacketTooLarge { size, max }) => {
            assert!(size > 300);
            assert_eq!(max, 200);
        }
        other => panic!("expected PacketTooLarge, got {other:?}"),
    }
    let empty = client.subscribe(Subscribe::new(forward::<mqttlink::Message>().0.recipient()));
    assert!(matches!(
        within(empty).await,
        Err(ClientError::InvalidRequest(_))
    ));
    let empty = client.unsubscribe(Unsubscribe::new());
    assert!(matches!(
        within(empty).await,
        Err(ClientError::InvalidRequest(_))
    ));

    // None of the refused requests reached the broker: the next packet is this one.
    let allowed = client.try_publish(Publish::new(topic("ok"), "y")).unwrap();
    match peer.recv().await {
        Packet::Publish(publish) => assert_eq!(publish.topic, Some(topic("ok"))),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
    assert!(within(allowed).await.is_ok());
    within(started.client.disconnect(Disconnect::new()))
        .await
        .unwrap();
}

#[actix_rt::test]
async fn requests_after_disconnect_fail_stopped() {
    let _serial = SERIAL.lock().await;
    let baseline = Resources::now();
    let (broker, started, mut peer) =
        connected(ProtocolVersion::V5, Properties::default(), |o| o).await;
    within(started.client.disconnect(Disconnect::new()))
        .await
        .unwrap();
    within(started.client.disconnect(Disconnect::new()))
        .await
        .unwrap();
    peer.expect_disconnect_with(DisconnectReason::NormalDisconnection)
        .await;

    let publish = started.client.publish(Publish::new(topic("t"), "x"));
    assert!(matches!(within(publish).await, Err(ClientError::Stopped)));
    let unsubscribe = started
        .client
        .unsubscribe(Unsubscribe::new().filter(filter("a")));
    assert!(matches!(
        within(unsubscribe).await,
        Err(ClientError::Stopped)
    ));
    assert!(matches!(
        within(started.client.stats()).await,
        Err(ClientError::Stopped)
    ));
    drop(started);
    drop(peer);
    drop(broker);
    baseline.assert_back().await;
}

#[actix_rt::test]
async fn try_publish_flood_answers_everyone() {
    let _serial = SERIAL.lock().await;
    let baseline = Resources::now();
    let (broker, started, mut peer) = connected(ProtocolVersion::V5, Properties::default(), |o| {
        o.max_pending_requests(256)
    })
    .await;

    let mut replies = Vec::new();
    let mut full = 0;
    for index in 0..10_000 {
        let publish = Publish::new(topic("flood"), format!("{index}")).qos(QoS::AtLeastOnce);
        match started.client.try_publish(publish) {
            Ok(reply) => replies.push(reply),
            Err(ClientError::QueueFull) => full += 1,
            Err(other) => panic!("expected QueueFull, got {other:?}"),
        }
    }
    assert!(full > 0, "10,000 requests never filled a queue of 256");
    assert!(replies.len() <= 256, "{} accepted", replies.len());

    // The broker acknowledges everything it receives until every caller has an answer.
    let accepted = replies.len();
    let broker_side = async {
        for _ in 0..accepted {
            let packet_id = expect_publish(&mut peer).await.unwrap();
            peer.send(&puback(packet_id)).await;
        }
    };
    let callers = async {
        let mut answered = 0;
        for reply in replies {
            assert!(within(reply).await.is_ok());
            answered += 1;
        }
        answered
    };
    let ((), answered) = tokio::join!(broker_side, callers);
    assert_eq!(answered, accepted);

    within(started.client.disconnect(Disconnect::new()))
        .await
        .unwrap();
    drop(started);
    drop(peer);
    drop(broker);
    baseline.assert_back().await;
}

#[actix_rt::test]
async fn dropping_client_fails_pending_requests() {
    let _serial = SERIAL.lock().await;
    let baseline = Resources::now();
    let (broker, started, mut peer) =
        connected(ProtocolVersion::V5, Properties::default(), |o| o).await;
    let Started { client, mut events } = started;

    let replies: Vec<_> = (0..20)
        .map(|_| {
            let publish = Publish::new(topic("t"), "x").qos(QoS::AtLeastOnce);
            client.try_publish(publish).unwrap()
        })
        .collect();
    for _ in 0..20 {
        expect_publish(&mut peer).await;
    }
    drop(client);

    for reply in replies {
        assert!(matches!(within(reply).await, Err(ClientError::Stopped)));
    }
    assert!(matches!(
        next(&mut events).await,
        Event::Disconnected {
            reason: DisconnectCause::Requested
        }
    ));
    assert!(peer.until_closed().await.is_empty());
    drop(peer);
    drop(broker);
    baseline.assert_back().await;
}

#[actix_rt::test]
async fn disconnect_during_connect_and_twice() {
    let _serial = SERIAL.lock().await;
    let baseline = Resources::now();
    let broker = Hostile::bind().await;
    let mut started = start(options(&broker, ProtocolVersion::V5));
    let mut peer = broker.accept().await;
    peer.expect_connect().await;
    let reply = started
        .client
        .try_publish(Publish::new(topic("t"), "x").qos(QoS::AtLeastOnce))
        .unwrap();

    let (first, second) = tokio::join!(
        started.client.disconnect(Disconnect::new()),
        started.client.disconnect(Disconnect::new())
    );
    assert!(first.is_ok());
    assert!(second.is_ok());
    assert!(matches!(within(reply).await, Err(ClientError::Stopped)));
    assert!(matches!(
        next(&mut started.events).await,
        Event::Disconnected {
            reason: DisconnectCause::Requested
        }
    ));
    // Before CONNACK the attempt is abandoned without DISCONNECT.
    assert!(peer.until_closed().await.is_empty());
    drop(started);
    drop(peer);
    drop(broker);
    baseline.assert_back().await;
}

// ---------------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------------

#[actix_rt::test]
async fn many_clients_against_one_broker() {
    let _serial = SERIAL.lock().await;
    let baseline = Resources::now();
    let broker = Hostile::bind().await;
    let clients: Vec<Started> = (0..20)
        .map(|index| {
            start(options(&broker, ProtocolVersion::V5).client_id(&format!("hostile-{index}")))
        })
        .collect();
    let mut peers = Vec::new();
    for _ in 0..20 {
        let mut peer = broker.accept().await;
        peer.handshake_with(Properties::default()).await;
        peers.push(peer);
    }

    let replies: Vec<_> = clients
        .iter()
        .map(|started| {
            let publish = Publish::new(topic("many"), "x").qos(QoS::AtLeastOnce);
            started.client.try_publish(publish).unwrap()
        })
        .collect();
    for peer in &mut peers {
        let packet_id = expect_publish(peer).await.unwrap();
        peer.send(&puback(packet_id)).await;
    }
    for reply in replies {
        assert!(within(reply).await.is_ok());
    }

    // The broker goes away with every connection at once.
    let pending: Vec<_> = clients
        .iter()
        .map(|started| {
            let publish = Publish::new(topic("many"), "y").qos(QoS::AtLeastOnce);
            started.client.try_publish(publish).unwrap()
        })
        .collect();
    for peer in &mut peers {
        expect_publish(peer).await;
    }
    drop(peers);
    drop(broker);
    for reply in pending {
        let error = within(reply).await.unwrap_err();
        assert!(
            matches!(error, ClientError::ConnectionClosed(_)),
            "{error:?}"
        );
    }
    for mut started in clients {
        assert!(matches!(
            failure(&mut started.events).await,
            ClientError::ConnectionClosed(_)
        ));
    }
    baseline.assert_back().await;
}

// ---------------------------------------------------------------------------------------
// Slow recipients and a broker that stops reading
// ---------------------------------------------------------------------------------------

#[actix_rt::test]
async fn stalled_recipient_does_not_delay_keep_alive() {
    let _serial = SERIAL.lock().await;
    let (_broker, started, mut peer) = connected(ProtocolVersion::V5, Properties::default(), |o| {
        o.keep_alive(Duration::from_secs(1))
    })
    .await;
    let (stalled, recipient, mut messages) = hostile::Stalled::start();
    started.client.set_default_recipient(recipient.recipient());

    // 5,000 QoS 0 messages in one write while the recipient cannot take any.
    let mut flood = Vec::new();
    for _ in 0..5_000 {
        flood.extend_from_slice(&peer.encode(&inbound(Delivery::AtMostOnce, "slow", b"x")));
    }
    peer.send_raw(&flood).await;

    // The client still sends PINGREQ about one second after CONNACK.
    let started_at = tokio::time::Instant::now();
    assert!(matches!(peer.recv().await, Packet::PingReq));
    assert!(started_at.elapsed() < Duration::from_secs(2));
    peer.send(&Packet::PingResp).await;

    let stats = within(started.client.stats()).await.unwrap();
    assert!(stats.dropped_messages > 0, "{stats:?}");
    assert!(stats.dropped_messages < 5_000, "{stats:?}");
    stalled.release();
    let delivered = 5_000 - stats.dropped_messages;
    for _ in 0..delivered {
        next(&mut messages).await;
    }
    within(started.client.disconnect(Disconnect::new()))
        .await
        .unwrap();
}

#[actix_rt::test]
async fn broker_not_reading_bounds_queue_and_times_out() {
    let _serial = SERIAL.lock().await;
    let baseline = Resources::now();
    let (broker, mut started, peer) = connected(ProtocolVersion::V5, Properties::default(), |o| {
        o.keep_alive(Duration::from_secs(1))
            .max_pending_requests(64)
    })
    .await;

    // The broker never reads again. 64 KiB payloads fill the socket buffers quickly.
    let payload = Bytes::from(vec![b'p'; 64 * 1024]);
    let mut replies = Vec::new();
    let mut full = 0_usize;
    for _ in 0..100_000 {
        match started
            .client
            .try_publish(Publish::new(topic("stuck"), payload.clone()))
        {
            Ok(reply) => replies.push(reply),
            Err(ClientError::QueueFull) => {
                full += 1;
                if full > 1_000 {
                    break;
                }
                tokio::task::yield_now().await;
            }
            Err(other) => panic!("expected QueueFull, got {other:?}"),
        }
    }
    assert!(full > 1_000, "queue never stayed full");
    let stats = within(started.client.stats()).await.unwrap();
    assert!(stats.queued_requests <= 64, "{stats:?}");

    // The PINGREQ cannot be written either, so the keep-alive deadline ends the connection
    // and every caller still waiting gets that error.
    let error = failure(&mut started.events).await;
    assert!(matches!(error, ClientError::KeepAliveTimeout), "{error:?}");
    let mut failed = 0;
    for reply in replies {
        if let Err(error) = within(reply).await {
            assert!(matches!(error, ClientError::KeepAliveTimeout), "{error:?}");
            failed += 1;
        }
    }
    assert!(failed > 0);
    drop(started);
    drop(peer);
    drop(broker);
    baseline.assert_back().await;
}

/// Checks that a broker that reads late still gets every packet whole and once, each
/// QoS 0 publish in order, and the acknowledgements of its messages in between. The
/// session's own writes and the socket's later ones share one buffer.
#[actix_rt::test]
async fn broker_reading_late_gets_every_packet_once() {
    const PUBLISHES: usize = 400;
    const MESSAGES: u16 = 100;
    let _serial = SERIAL.lock().await;
    let baseline = Resources::now();
    let (broker, started, mut peer) =
        connected(ProtocolVersion::V5, Properties::default(), |o| o).await;
    let (recipient, mut messages) = forward::<mqttlink::Message>();
    started.client.set_default_recipient(recipient.recipient());

    // 400 x 64 KiB is more than the socket buffers of both ends hold unread.
    let mut replies = Vec::new();
    for index in 0..PUBLISHES {
        let mut payload = vec![b'p'; 64 * 1024];
        payload[..4].copy_from_slice(&u32::try_from(index).unwrap().to_be_bytes());
        let publish = Publish::new(topic("late"), Bytes::from(payload));
        replies.push(started.client.try_publish(publish).unwrap());
    }
    // Messages from the broker meanwhile: their PUBACKs queue behind the publishes.
    let mut burst = Vec::new();
    for value in 1..=MESSAGES {
        let message = inbound(Delivery::AtLeastOnce(id(value)), "in", b"m");
        burst.extend_from_slice(&peer.encode(&message));
    }
    peer.send_raw(&burst).await;
    for _ in 0..MESSAGES {
        next(&mut messages).await;
    }
    let stats = within(started.client.stats()).await.unwrap();
    let publish_bytes = u64::try_from(PUBLISHES * 64 * 1024).unwrap();
    assert!(
        stats.bytes_out < publish_bytes,
        "the stream took every publish at once, so nothing was left to the socket: {stats:?}"
    );

    let mut next_index = 0;
    let mut acknowledged = std::collections::BTreeSet::new();
    while next_index < PUBLISHES || acknowledged.len() < usize::from(MESSAGES) {
        match peer.recv().await {
            Packet::Publish(publish) => {
                let index = u32::from_be_bytes(publish.payload[..4].try_into().unwrap());
                assert_eq!(usize::try_from(index).unwrap(), next_index);
                assert_eq!(publish.payload.len(), 64 * 1024);
                next_index += 1;
            }
            Packet::PubAck(ack) => {
                assert!(acknowledged.insert(ack.packet_id.get()), "{ack:?} twice");
            }
            other => panic!("expected PUBLISH or PUBACK, got {other:?}"),
        }
    }
    assert_eq!(
        acknowledged.into_iter().collect::<Vec<_>>(),
        (1..=MESSAGES).collect::<Vec<_>>()
    );
    for reply in replies {
        within(reply).await.unwrap();
    }
    within(started.client.disconnect(Disconnect::new()))
        .await
        .unwrap();
    assert!(matches!(peer.recv().await, Packet::Disconnect(_)));
    drop(started);
    drop(peer);
    drop(broker);
    baseline.assert_back().await;
}

#[actix_rt::test]
async fn disconnect_with_full_socket_finishes() {
    let _serial = SERIAL.lock().await;
    let baseline = Resources::now();
    let (broker, started, peer) = connected(ProtocolVersion::V5, Properties::default(), |o| {
        o.disconnect_timeout(Duration::from_millis(300))
    })
    .await;
    let payload = Bytes::from(vec![b'p'; 64 * 1024]);
    let mut replies = Vec::new();
    for _ in 0..200 {
        if let Ok(reply) = started
            .client
            .try_publish(Publish::new(topic("stuck"), payload.clone()).qos(QoS::AtLeastOnce))
        {
            replies.push(reply);
        }
        tokio::task::yield_now().await;
    }
    within(started.client.disconnect(Disconnect::new()))
        .await
        .unwrap();
    for reply in replies {
        assert!(matches!(within(reply).await, Err(ClientError::Stopped)));
    }
    drop(started);
    drop(peer);
    drop(broker);
    baseline.assert_back().await;
}

// ---------------------------------------------------------------------------------------
// More broker faults
// ---------------------------------------------------------------------------------------

/// Answers CONNECT with `reply` (raw bytes) and returns what the client sent before it
/// closed, and the failure it reported.
async fn reply_to_connect(protocol: ProtocolVersion, reply: &[u8]) -> (Vec<Packet>, ClientError) {
    let broker = Hostile::bind().await;
    let mut started = start(options(&broker, protocol));
    let mut peer = broker.accept().await;
    peer.expect_connect().await;
    peer.send_raw(reply).await;
    let packets = peer.until_closed().await;
    (packets, failure(&mut started.events).await)
}

fn only_disconnect(packets: &[Packet], reason: DisconnectReason) -> bool {
    matches!(packets, [Packet::Disconnect(DisconnectPacket { reason: sent, .. })] if *sent == reason)
}

#[actix_rt::test]
async fn invalid_connack_closes() {
    let _serial = SERIAL.lock().await;
    let baseline = Resources::now();
    let cases: [(&str, &[u8], DisconnectReason); 5] = [
        // Session Present in reply to a clean start.
        (
            "session present",
            &[0x20, 0x03, 0x01, 0x00, 0x00],
            DisconnectReason::ProtocolError,
        ),
        // Assigned Client Identifier "x" for the non-empty identifier "hostile".
        (
            "assigned identifier",
            &[0x20, 0x07, 0x00, 0x00, 0x04, 0x12, 0x00, 0x01, b'x'],
            DisconnectReason::ProtocolError,
        ),
        // Receive Maximum 0.
        (
            "receive maximum 0",
            &[0x20, 0x06, 0x00, 0x00, 0x03, 0x21, 0x00, 0x00],
            DisconnectReason::ProtocolError,
        ),
        // Maximum QoS 2, which CONNACK must not carry.
        (
            "maximum qos 2",
            &[0x20, 0x05, 0x00, 0x00, 0x02, 0x24, 0x02],
            DisconnectReason::ProtocolError,
        ),
        // Maximum Packet Size 0.
        (
            "maximum packet size 0",
            &[0x20, 0x08, 0x00, 0x00, 0x05, 0x27, 0x00, 0x00, 0x00, 0x00],
            DisconnectReason::ProtocolError,
        ),
    ];
    for (name, reply, reason) in cases {
        let (packets, error) = reply_to_connect(ProtocolVersion::V5, reply).await;
        assert!(
            only_disconnect(&packets, reason),
            "{name}: client sent {packets:?}"
        );
        assert!(is_violation(&error), "{name}: {error:?}");
    }
    baseline.assert_back().await;
}

#[actix_rt::test]
async fn invalid_connack_v3_closes_silently() {
    let _serial = SERIAL.lock().await;
    let cases: [(&str, &[u8]); 3] = [
        ("session present", &[0x20, 0x02, 0x01, 0x00]),
        ("return code 6", &[0x20, 0x02, 0x00, 0x06]),
        ("flags 0x02", &[0x20, 0x02, 0x02, 0x00]),
    ];
    for (name, reply) in cases {
        let (packets, error) = reply_to_connect(ProtocolVersion::V3_1_1, reply).await;
        assert!(packets.is_empty(), "{name}: client sent {packets:?}");
        assert!(is_violation(&error), "{name}: {error:?}");
    }
}

#[actix_rt::test]
async fn connack_refusal_with_server_reference() {
    let _serial = SERIAL.lock().await;
    // v5 CONNACK 0x9C Use Another Server with Server Reference "b".
    let reply = [0x20, 0x07, 0x00, 0x9C, 0x04, 0x1C, 0x00, 0x01, b'b'];
    let (packets, error) = reply_to_connect(ProtocolVersion::V5, &reply).await;
    assert!(packets.is_empty(), "client sent {packets:?}");
    assert!(
        matches!(
            error,
            ClientError::ConnectRefused {
                reason: ConnectReason::UseAnotherServer,
                ..
            }
        ),
        "{error:?}"
    );
}

#[actix_rt::test]
async fn missing_connack_times_out() {
    let _serial = SERIAL.lock().await;
    let baseline = Resources::now();
    let broker = Hostile::bind().await;
    let options = options(&broker, ProtocolVersion::V5).connect_timeout(Duration::from_millis(300));
    let mut started = start(options);
    let mut peer = broker.accept().await;
    peer.expect_connect().await;
    let reply = started
        .client
        .try_publish(Publish::new(topic("t"), "x"))
        .unwrap();
    assert!(matches!(
        within(reply).await,
        Err(ClientError::ConnectTimeout)
    ));
    assert!(matches!(
        failure(&mut started.events).await,
        ClientError::ConnectTimeout
    ));
    assert!(peer.until_closed().await.is_empty());
    drop(started);
    drop(peer);
    drop(broker);
    baseline.assert_back().await;
}

#[actix_rt::test]
async fn invalid_inbound_packets_close() {
    let _serial = SERIAL.lock().await;
    let cases: [(&str, &[u8], DisconnectReason); 5] = [
        // PUBLISH with QoS 3.
        (
            "qos 3",
            &[0x36, 0x06, 0x00, 0x01, b'a', 0x00, 0x01, 0x00],
            DisconnectReason::MalformedPacket,
        ),
        // PUBLISH to the topic name "a/+".
        (
            "wildcard topic",
            &[0x30, 0x06, 0x00, 0x03, b'a', b'/', b'+', 0x00],
            DisconnectReason::MalformedPacket,
        ),
        // PUBLISH with Subscription Identifier 0.
        (
            "subscription identifier 0",
            &[0x30, 0x06, 0x00, 0x01, b'a', 0x02, 0x0B, 0x00],
            DisconnectReason::ProtocolError,
        ),
        // PUBACK with reason code 0x05, which PUBACK does not allow.
        (
            "puback reason 0x05",
            &[0x40, 0x03, 0x00, 0x01, 0x05],
            DisconnectReason::MalformedPacket,
        ),
        // PUBLISH with packet identifier 0 at QoS 1.
        (
            "packet id 0",
            &[0x32, 0x06, 0x00, 0x01, b'a', 0x00, 0x00, 0x00],
            DisconnectReason::ProtocolError,
        ),
    ];
    for (name, bytes, reason) in cases {
        let (_broker, mut started, mut peer) =
            connected(ProtocolVersion::V5, Properties::default(), |o| o).await;
        peer.send_raw(bytes).await;
        let packets = peer.until_closed().await;
        assert!(
            only_disconnect(&packets, reason),
            "{name}: client sent {packets:?}"
        );
        assert!(is_violation(&failure(&mut started.events).await), "{name}");
    }
}

#[actix_rt::test]
async fn disconnect_packet_under_v3_closes() {
    let _serial = SERIAL.lock().await;
    let (_broker, mut started, mut peer) =
        connected(ProtocolVersion::V3_1_1, Properties::default(), |o| o).await;
    peer.send_raw(&[0xE0, 0x00]).await;
    assert!(peer.until_closed().await.is_empty());
    assert!(is_violation(&failure(&mut started.events).await));
}

#[actix_rt::test]
async fn packet_id_spaces_stay_apart() {
    let _serial = SERIAL.lock().await;
    let (_broker, started, mut peer) =
        connected(ProtocolVersion::V5, Properties::default(), |o| o).await;
    let (recipient, mut messages) = forward::<mqttlink::Message>();
    started.client.set_default_recipient(recipient.recipient());
    let reply = started
        .client
        .try_publish(Publish::new(topic("out"), "o").qos(QoS::AtLeastOnce))
        .unwrap();
    let packet_id = expect_publish(&mut peer).await.unwrap();

    // An inbound QoS 1 message with the same identifier is acknowledged on its own.
    peer.send(&inbound(Delivery::AtLeastOnce(packet_id), "in", b"i"))
        .await;
    assert_eq!(&next(&mut messages).await.payload[..], b"i");
    assert!(matches!(peer.recv().await, Packet::PubAck(a) if a.packet_id == packet_id));
    let stats = within(started.client.stats()).await.unwrap();
    assert_eq!(stats.inflight_out, 1, "the outbound flow is still open");

    peer.send(&puback(packet_id)).await;
    assert!(within(reply).await.is_ok());
    within(started.client.disconnect(Disconnect::new()))
        .await
        .unwrap();
}

#[actix_rt::test]
async fn failed_pubrec_rejects_and_late_pubcomp_ignored() {
    let _serial = SERIAL.lock().await;
    let (_broker, started, mut peer) =
        connected(ProtocolVersion::V5, Properties::default(), |o| o).await;
    let reply = started
        .client
        .try_publish(Publish::new(topic("t"), "x").qos(QoS::ExactlyOnce))
        .unwrap();
    let packet_id = expect_publish(&mut peer).await.unwrap();
    let rec = PubRec {
        packet_id,
        reason: PubAckReason::QuotaExceeded,
        properties: Properties::default().into(),
    };
    peer.send(&Packet::PubRec(rec)).await;
    match within(reply).await {
        Err(ClientError::Rejected { reason, .. }) => {
            assert_eq!(
                reason,
                mqttlink::RejectReason::Publish(PubAckReason::QuotaExceeded)
            );
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    peer.send(&pubcomp(packet_id)).await;

    // Still connected: the next publish completes.
    let reply = started
        .client
        .try_publish(Publish::new(topic("t"), "y").qos(QoS::AtLeastOnce))
        .unwrap();
    let next_id = expect_publish(&mut peer).await.unwrap();
    peer.send(&puback(next_id)).await;
    assert!(within(reply).await.is_ok());
    within(started.client.disconnect(Disconnect::new()))
        .await
        .unwrap();
}

#[actix_rt::test]
async fn disconnect_waits_at_most_disconnect_timeout() {
    let _serial = SERIAL.lock().await;
    let baseline = Resources::now();
    let (broker, started, mut peer) = connected(ProtocolVersion::V5, Properties::default(), |o| {
        o.disconnect_timeout(Duration::from_millis(300))
    })
    .await;
    let reply = started
        .client
        .try_publish(Publish::new(topic("t"), "x").qos(QoS::AtLeastOnce))
        .unwrap();
    expect_publish(&mut peer).await;

    // The broker never acknowledges; DISCONNECT follows after the timeout.
    let begin = tokio::time::Instant::now();
    let (result, ()) = tokio::join!(
        within(started.client.disconnect(Disconnect::new())),
        peer.expect_disconnect_with(DisconnectReason::NormalDisconnection)
    );
    assert!(result.is_ok());
    assert!(begin.elapsed() >= Duration::from_millis(250));
    assert!(matches!(within(reply).await, Err(ClientError::Stopped)));
    drop(started);
    drop(peer);
    drop(broker);
    baseline.assert_back().await;
}

// ---------------------------------------------------------------------------------------
// More caller input
// ---------------------------------------------------------------------------------------

#[actix_rt::test]
async fn invalid_requests_rejected_before_sending() {
    let _serial = SERIAL.lock().await;
    let (_broker, started, mut peer) =
        connected(ProtocolVersion::V5, Properties::default(), |o| o).await;
    let client = &started.client;

    let alias = Properties {
        topic_alias: NonZeroU16::new(1),
        ..Properties::default()
    };
    let sub_id = Properties {
        subscription_identifiers: vec![NonZeroU32::new(1).unwrap()],
        ..Properties::default()
    };
    let null_key = Properties {
        user_properties: vec![("a\0b".into(), "v".into())],
        ..Properties::default()
    };
    for (name, properties) in [
        ("topic alias", alias),
        ("subscription identifier", sub_id),
        ("NUL in user property", null_key),
    ] {
        let publish = Publish::new(topic("t"), "x").properties(properties);
        let result = within(client.publish(publish)).await;
        assert!(
            matches!(result, Err(ClientError::InvalidRequest(_))),
            "{name}: {result:?}"
        );
    }

    let (recipient, _messages) = forward::<mqttlink::Message>();
    let shared_no_local = SubscriptionOptions {
        no_local: true,
        ..SubscriptionOptions::with_qos(QoS::AtLeastOnce)
    };
    let request =
        Subscribe::new(recipient.clone().recipient()).filter(filter("$share/g/a"), shared_no_local);
    let result = within(client.subscribe(request)).await;
    assert!(
        matches!(result, Err(ClientError::InvalidRequest(_))),
        "no local on shared: {result:?}"
    );

    let too_big_id = Properties {
        subscription_identifiers: vec![NonZeroU32::new(268_435_456).unwrap()],
        ..Properties::default()
    };
    let request = Subscribe::new(recipient.recipient())
        .filter(filter("a"), SubscriptionOptions::default())
        .properties(too_big_id);
    let result = within(client.subscribe(request)).await;
    assert!(
        matches!(result, Err(ClientError::InvalidRequest(_))),
        "identifier above maximum: {result:?}"
    );

    // Nothing reached the broker: the next packet is this one.
    let allowed = client.try_publish(Publish::new(topic("ok"), "y")).unwrap();
    match peer.recv().await {
        Packet::Publish(publish) => assert_eq!(publish.topic, Some(topic("ok"))),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
    assert!(within(allowed).await.is_ok());
    within(client.disconnect(Disconnect::new())).await.unwrap();
}

#[actix_rt::test]
async fn v5_only_requests_rejected_under_v3() {
    let _serial = SERIAL.lock().await;
    let (_broker, started, mut peer) =
        connected(ProtocolVersion::V3_1_1, Properties::default(), |o| o).await;
    let client = &started.client;
    let user = Properties {
        user_properties: vec![("k".into(), "v".into())],
        ..Properties::default()
    };
    let publish = Publish::new(topic("t"), "x").properties(user.clone());
    let result = within(client.publish(publish)).await;
    assert!(
        matches!(result, Err(ClientError::InvalidRequest(_))),
        "{result:?}"
    );

    let (recipient, _messages) = forward::<mqttlink::Message>();
    let request = Subscribe::new(recipient.clone().recipient())
        .filter(filter("a"), SubscriptionOptions::default())
        .properties(user);
    let result = within(client.subscribe(request)).await;
    assert!(
        matches!(result, Err(ClientError::InvalidRequest(_))),
        "{result:?}"
    );
    let no_local = SubscriptionOptions {
        no_local: true,
        ..SubscriptionOptions::default()
    };
    let request = Subscribe::new(recipient.recipient()).filter(filter("a"), no_local);
    let result = within(client.subscribe(request)).await;
    assert!(
        matches!(result, Err(ClientError::InvalidRequest(_))),
        "{result:?}"
    );

    let allowed = client.try_publish(Publish::new(topic("ok"), "y")).unwrap();
    match peer.recv().await {
        Packet::Publish(publish) => assert_eq!(publish.topic, Some(topic("ok"))),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
    assert!(within(allowed).await.is_ok());
    within(client.disconnect(Disconnect::new())).await.unwrap();
}

#[actix_rt::test]
async fn repeated_pubrec_resends_pubrel() {
    let _serial = SERIAL.lock().await;
    let (_broker, started, mut peer) =
        connected(ProtocolVersion::V5, Properties::default(), |o| o).await;
    let reply = started
        .client
        .try_publish(Publish::new(topic("t"), "x").qos(QoS::ExactlyOnce))
        .unwrap();
    let packet_id = expect_publish(&mut peer).await.unwrap();
    for _ in 0..2 {
        peer.send(&pubrec(packet_id)).await;
        assert!(matches!(peer.recv().await, Packet::PubRel(r) if r.packet_id == packet_id));
    }
    peer.send(&pubcomp(packet_id)).await;
    peer.send(&pubcomp(packet_id)).await;
    assert_eq!(
        within(reply).await.unwrap().reason,
        Some(PubAckReason::Success)
    );
    let stats = within(started.client.stats()).await.unwrap();
    assert_eq!(stats.inflight_out, 0);
    within(started.client.disconnect(Disconnect::new()))
        .await
        .unwrap();
    peer.expect_disconnect_with(DisconnectReason::NormalDisconnection)
        .await;
}

#[actix_rt::test]
async fn malformed_broker_disconnect_closes() {
    let _serial = SERIAL.lock().await;
    let (_broker, mut started, mut peer) =
        connected(ProtocolVersion::V5, Properties::default(), |o| o).await;
    // DISCONNECT with reason code 0x05, which DISCONNECT does not allow.
    peer.send_raw(&[0xE0, 0x01, 0x05]).await;
    peer.expect_disconnect_with(DisconnectReason::MalformedPacket)
        .await;
    assert!(is_violation(&failure(&mut started.events).await));
}

// ---------------------------------------------------------------------------------------
// Limits announced through connect_properties, identifier reuse, client rules
// ---------------------------------------------------------------------------------------

/// Options that announce `properties` through `connect_properties` only.
fn announcing(properties: Properties) -> impl FnOnce(ClientOptions) -> ClientOptions {
    move |o: ClientOptions| o.connect_properties(properties)
}

/// Starts a v5 client that announces `properties` through `connect_properties`,
/// completes the handshake and returns the CONNECT the client sent.
async fn connected_announcing(
    properties: Properties,
) -> (Hostile, Started, Peer, mqttlink::codec::Connect) {
    let broker = Hostile::bind().await;
    let mut started = start(announcing(properties)(options(
        &broker,
        ProtocolVersion::V5,
    )));
    let mut peer = broker.accept().await;
    let connect = peer.handshake_with(Properties::default()).await;
    assert!(matches!(
        next(&mut started.events).await,
        Event::Connected { .. }
    ));
    (broker, started, peer, connect)
}

#[actix_rt::test]
async fn connect_properties_topic_alias_accepted() {
    let _serial = SERIAL.lock().await;
    let properties = Properties {
        topic_alias_maximum: Some(2),
        ..Properties::default()
    };
    let (_broker, started, mut peer) = connected(
        ProtocolVersion::V5,
        Properties::default(),
        announcing(properties),
    )
    .await;
    let (recipient, mut messages) = forward::<mqttlink::Message>();
    started.client.set_default_recipient(recipient.recipient());

    // PUBLISH "a" defining Topic Alias 1, then a PUBLISH with an empty topic using it.
    peer.send_raw(&[0x30, 0x07, 0x00, 0x01, b'a', 0x03, 0x23, 0x00, 0x01])
        .await;
    peer.send_raw(&[0x30, 0x06, 0x00, 0x00, 0x03, 0x23, 0x00, 0x01])
        .await;
    assert_eq!(next(&mut messages).await.topic.as_str(), "a");
    assert_eq!(next(&mut messages).await.topic.as_str(), "a");
    within(started.client.disconnect(Disconnect::new()))
        .await
        .unwrap();
    peer.expect_disconnect_with(DisconnectReason::NormalDisconnection)
        .await;
}

#[actix_rt::test]
async fn connect_properties_undefined_alias_closes() {
    let _serial = SERIAL.lock().await;
    // Empty topic with Topic Alias 1, which the broker never defined.
    let bytes = [0x30, 0x06, 0x00, 0x00, 0x03, 0x23, 0x00, 0x01];
    let properties = Properties {
        topic_alias_maximum: Some(2),
        ..Properties::default()
    };
    inbound_closes(
        &bytes,
        announcing(properties),
        DisconnectReason::ProtocolError,
    )
    .await;
}

#[actix_rt::test]
async fn connect_properties_receive_maximum_enforced() {
    let _serial = SERIAL.lock().await;
    let properties = Properties {
        receive_maximum: NonZeroU16::new(2),
        ..Properties::default()
    };
    let (_broker, mut started, mut peer, connect) = connected_announcing(properties).await;
    assert_eq!(connect.properties.receive_maximum, NonZeroU16::new(2));

    // Three QoS 2 messages, never released.
    for number in 1..=3 {
        peer.send(&inbound(Delivery::ExactlyOnce(id(number)), "rm", b"x"))
            .await;
    }
    peer.expect_disconnect_with(DisconnectReason::ReceiveMaximumExceeded)
        .await;
    assert!(is_violation(&failure(&mut started.events).await));
}

#[actix_rt::test]
async fn connect_properties_maximum_packet_size_enforced() {
    let _serial = SERIAL.lock().await;
    let properties = Properties {
        maximum_packet_size: NonZeroU32::new(1024),
        ..Properties::default()
    };
    let (_broker, mut started, mut peer, connect) = connected_announcing(properties).await;
    assert_eq!(
        connect.properties.maximum_packet_size,
        NonZeroU32::new(1024)
    );

    peer.send(&inbound(Delivery::AtMostOnce, "big", &BIG)).await;
    peer.expect_disconnect_with(DisconnectReason::PacketTooLarge)
        .await;
    assert!(is_violation(&failure(&mut started.events).await));
}

#[actix_rt::test]
async fn repeated_qos1_packet_id_closes() {
    let _serial = SERIAL.lock().await;
    let (_broker, mut started, mut peer) =
        connected(ProtocolVersion::V5, Properties::default(), |o| {
            o.receive_maximum(10)
        })
        .await;
    let (stalled, recipient, mut messages) = hostile::Stalled::start();
    started.client.set_default_recipient(recipient.recipient());

    // 50 QoS 1 PUBLISH packets in one write, all with packet identifier 1.
    let mut flood = Vec::new();
    for _ in 0..50 {
        let packet = inbound(Delivery::AtLeastOnce(id(1)), "dup", b"x");
        flood.extend_from_slice(&peer.encode(&packet));
    }
    peer.send_raw(&flood).await;
    peer.expect_disconnect_with(DisconnectReason::ProtocolError)
        .await;
    assert!(is_violation(&failure(&mut started.events).await));

    stalled.release();
    let mut delivered = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), messages.recv()).await
    {
        delivered += 1;
    }
    assert!(delivered <= 1, "{delivered} copies delivered");
}

#[actix_rt::test]
async fn try_publish_after_stop_fails_stopped() {
    let _serial = SERIAL.lock().await;
    let (_broker, started, mut peer) =
        connected(ProtocolVersion::V5, Properties::default(), |o| o).await;
    within(started.client.disconnect(Disconnect::new()))
        .await
        .unwrap();
    peer.expect_disconnect_with(DisconnectReason::NormalDisconnection)
        .await;

    // Once the supervisor stopped, its semaphore is closed.
    let stopped = async {
        while started.client.stats().await.is_ok() {
            tokio::task::yield_now().await;
        }
    };
    within(stopped).await;
    let result = started.client.try_publish(Publish::new(topic("t"), "x"));
    assert!(matches!(result, Err(ClientError::Stopped)));
}

#[actix_rt::test]
async fn disconnect_session_expiry_rejected_after_zero() {
    let _serial = SERIAL.lock().await;
    let (_broker, started, mut peer) =
        connected(ProtocolVersion::V5, Properties::default(), |o| o).await;
    // CONNECT sent no Session Expiry Interval, so DISCONNECT must not set a non-zero one.
    let result = within(
        started
            .client
            .disconnect(Disconnect::new().session_expiry(60)),
    )
    .await;
    assert!(
        matches!(result, Err(ClientError::InvalidRequest(_))),
        "{result:?}"
    );

    // The refused request left the client connected: a valid disconnect still works.
    within(started.client.disconnect(Disconnect::new()))
        .await
        .unwrap();
    let packets = peer.until_closed().await;
    match packets.last() {
        Some(Packet::Disconnect(disconnect)) => {
            assert_eq!(disconnect.reason, DisconnectReason::NormalDisconnection);
            assert_eq!(disconnect.properties.session_expiry_interval, None);
        }
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
}

#[actix_rt::test]
async fn disconnect_session_expiry_kept_after_non_zero() {
    let _serial = SERIAL.lock().await;
    let (_broker, started, mut peer) = connected(ProtocolVersion::V5, Properties::default(), |o| {
        o.session_expiry(Duration::from_secs(10))
    })
    .await;
    within(
        started
            .client
            .disconnect(Disconnect::new().session_expiry(60)),
    )
    .await
    .unwrap();
    let packets = peer.until_closed().await;
    match packets.last() {
        Some(Packet::Disconnect(disconnect)) => {
            assert_eq!(disconnect.properties.session_expiry_interval, Some(60));
        }
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
}

#[actix_rt::test]
async fn server_only_disconnect_reason_rejected() {
    let _serial = SERIAL.lock().await;
    let (_broker, started, mut peer) =
        connected(ProtocolVersion::V5, Properties::default(), |o| o).await;
    // 0x8B Server shutting down is sent only by a server (MQTT 5.0 section 3.14.2.1).
    let disconnect = Disconnect::new().reason(DisconnectReason::ServerShuttingDown);
    let result = within(started.client.disconnect(disconnect)).await;
    assert!(
        matches!(result, Err(ClientError::InvalidRequest(_))),
        "{result:?}"
    );

    within(started.client.disconnect(Disconnect::new()))
        .await
        .unwrap();
    peer.expect_disconnect_with(DisconnectReason::NormalDisconnection)
        .await;
}
