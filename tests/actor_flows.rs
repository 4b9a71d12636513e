//! Deeper flows of the client's actors against the scripted fake broker: routing after
//! SUBACK and UNSUBACK, broker limits, inbound QoS 2, tolerated faults, keep-alive and
//! the bounded request queue.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "support/actor_broker.rs"]
mod actor_broker;

use std::num::NonZeroU32;
use std::time::Duration;

use actor_broker::{
    assert_actors_back_to, forward, next, BrokerConnection, FakeBroker, Gate, STEP,
};
use bytes::Bytes;
use mqttlink::codec::{
    ConnectReason, Delivery, Disconnect, DisconnectReason, Packet, PacketId, Properties,
    ProtocolVersion, PubAck, PubAckReason, PubCompReason, PubRel, QoS, SubAck, SubAckReason,
    SubscriptionOptions, UnsubAck, UnsubAckReason,
};
use mqttlink::{
    live_actor_count, ClientError, ClientOptions, ClosedBy, Message, Publish, Subscribe,
    Unsubscribe,
};

/// `live_actor_count` is process-wide, so the tests of this file run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn id(value: u16) -> PacketId {
    PacketId::try_from(value).unwrap()
}

fn inbound(delivery: Delivery, topic: &str, payload: &'static [u8]) -> Packet {
    Packet::Publish(mqttlink::codec::Publish {
        dup: false,
        delivery,
        retain: false,
        topic: Some(topic.parse().unwrap()),
        properties: Properties::default().into(),
        payload: Bytes::from_static(payload),
    })
}

fn puback(packet_id: PacketId) -> Packet {
    Packet::PubAck(PubAck {
        packet_id,
        reason: PubAckReason::Success,
        properties: Properties::default().into(),
    })
}

async fn answer_subscribe(connection: &mut BrokerConnection, reasons: Vec<SubAckReason>) {
    let Packet::Subscribe(subscribe) = connection.recv().await else {
        panic!("expected SUBSCRIBE");
    };
    let ack = SubAck {
        packet_id: subscribe.packet_id,
        reasons,
        properties: Properties::default().into(),
    };
    connection.send(&Packet::SubAck(ack)).await;
}

#[actix_rt::test]
async fn refused_filter_and_unsubscribe_stop_routing() {
    let _serial = SERIAL.lock().await;
    let broker = FakeBroker::bind().await;
    let client = ClientOptions::from_url(&broker.url())
        .unwrap()
        .client_id("routes")
        .start()
        .unwrap();
    let mut connection = broker.accept().await;
    connection.handshake().await;

    let (subscriber, mut subscriber_rx) = forward::<Message>();
    let (fallback, mut fallback_rx) = forward::<Message>();
    client.set_default_recipient(fallback.recipient());
    let options = SubscriptionOptions::default();
    let request = Subscribe::new(subscriber.recipient())
        .filter("a/1".parse().unwrap(), options)
        .filter("a/2".parse().unwrap(), options);
    let reasons = vec![SubAckReason::GrantedQoS0, SubAckReason::NotAuthorized];
    let (outcome, ()) = tokio::join!(
        client.subscribe(request),
        answer_subscribe(&mut connection, reasons)
    );
    assert_eq!(outcome.unwrap().reasons.len(), 2);

    connection
        .send(&inbound(Delivery::AtMostOnce, "a/2", b"refused"))
        .await;
    connection
        .send(&inbound(Delivery::AtMostOnce, "a/1", b"granted"))
        .await;
    assert_eq!(&next(&mut fallback_rx).await.payload[..], b"refused");
    assert_eq!(&next(&mut subscriber_rx).await.payload[..], b"granted");

    let unsubscribe = client.unsubscribe(Unsubscribe::new().filter("a/1".parse().unwrap()));
    let broker_side = async {
        let Packet::Unsubscribe(request) = connection.recv().await else {
            panic!("expected UNSUBSCRIBE");
        };
        let ack = UnsubAck {
            packet_id: request.packet_id,
            reasons: vec![UnsubAckReason::Success],
            properties: Properties::default().into(),
        };
        connection.send(&Packet::UnsubAck(ack)).await;
    };
    let (outcome, ()) = tokio::join!(unsubscribe, broker_side);
    assert_eq!(outcome.unwrap().reasons, [UnsubAckReason::Success]);

    connection
        .send(&inbound(Delivery::AtMostOnce, "a/1", b"after"))
        .await;
    assert_eq!(&next(&mut fallback_rx).await.payload[..], b"after");
    client
        .disconnect(mqttlink::Disconnect::new())
        .await
        .unwrap();
}

#[actix_rt::test]
async fn subscription_identifier_routes_exactly() {
    let _serial = SERIAL.lock().await;
    let broker = FakeBroker::bind().await;
    let client = ClientOptions::from_url(&broker.url())
        .unwrap()
        .client_id("ids")
        .start()
        .unwrap();
    let mut connection = broker.accept().await;
    connection.handshake().await;

    let (wide, mut wide_rx) = forward::<Message>();
    let (narrow, mut narrow_rx) = forward::<Message>();
    for (recipient, identifier) in [(wide.recipient(), 1), (narrow.recipient(), 2)] {
        let properties = Properties {
            subscription_identifiers: vec![NonZeroU32::new(identifier).unwrap()],
            ..Properties::default()
        };
        let request = Subscribe::new(recipient)
            .filter("s/#".parse().unwrap(), SubscriptionOptions::default())
            .properties(properties);
        let (outcome, ()) = tokio::join!(
            client.subscribe(request),
            answer_subscribe(&mut connection, vec![SubAckReason::GrantedQoS0])
        );
        outcome.unwrap();
    }

    let mut publish = inbound(Delivery::AtMostOnce, "s/x", b"for two");
    if let Packet::Publish(p) = &mut publish {
        p.properties.subscription_identifiers = vec![NonZeroU32::new(2).unwrap()];
    }
    connection.send(&publish).await;
    connection
        .send(&inbound(Delivery::AtMostOnce, "s/y", b"for both"))
        .await;
    assert_eq!(&next(&mut narrow_rx).await.payload[..], b"for two");
    assert_eq!(&next(&mut narrow_rx).await.payload[..], b"for both");
    assert_eq!(
        &next(&mut wide_rx).await.payload[..],
        b"for both",
        "identifier 2 skipped the wide route"
    );
    client
        .disconnect(mqttlink::Disconnect::new())
        .await
        .unwrap();
}

#[actix_rt::test]
async fn broker_limits_refuse_before_sending() {
    let _serial = SERIAL.lock().await;
    let broker = FakeBroker::bind().await;
    let client = ClientOptions::from_url(&broker.url())
        .unwrap()
        .client_id("limits")
        .start()
        .unwrap();
    let mut connection = broker.accept().await;
    connection.expect_connect().await;
    let limits = Properties {
        maximum_packet_size: NonZeroU32::new(64),
        maximum_qos: Some(QoS::AtLeastOnce),
        ..Properties::default()
    };
    connection.connack(ConnectReason::Success, limits).await;

    let topic: mqttlink::codec::TopicName = "big".parse().unwrap();
    let large = client
        .publish(Publish::new(topic.clone(), vec![0_u8; 100]))
        .await;
    assert!(
        matches!(large, Err(ClientError::PacketTooLarge { max: 64, .. })),
        "{large:?}"
    );
    let qos2 = client
        .publish(Publish::new(topic.clone(), "x").qos(QoS::ExactlyOnce))
        .await;
    assert!(
        matches!(qos2, Err(ClientError::InvalidRequest(_))),
        "{qos2:?}"
    );

    let small = client.publish(Publish::new(topic, "fits"));
    let (outcome, packet) = tokio::join!(small, connection.recv());
    outcome.unwrap();
    assert!(
        matches!(packet, Packet::Publish(p) if &p.payload[..] == b"fits"),
        "only the small one was sent"
    );
    client
        .disconnect(mqttlink::Disconnect::new())
        .await
        .unwrap();
}

#[actix_rt::test]
async fn inbound_qos2_completes_and_unknown_puback_tolerated() {
    let _serial = SERIAL.lock().await;
    let broker = FakeBroker::bind().await;
    let client = ClientOptions::from_url(&broker.url())
        .unwrap()
        .client_id("qos2")
        .start()
        .unwrap();
    let (sink, mut sink_rx) = forward::<Message>();
    client.set_default_recipient(sink.recipient());
    let mut connection = broker.accept().await;
    connection.handshake().await;

    let unknown = PubAck {
        packet_id: id(9),
        reason: PubAckReason::Success,
        properties: Properties::default().into(),
    };
    connection.send(&Packet::PubAck(unknown)).await;

    connection
        .send(&inbound(Delivery::ExactlyOnce(id(5)), "q/2", b"once"))
        .await;
    assert_eq!(next(&mut sink_rx).await.qos, QoS::ExactlyOnce);
    assert!(matches!(connection.recv().await, Packet::PubRec(r) if r.packet_id == id(5)));
    let release = PubRel {
        packet_id: id(5),
        reason: PubCompReason::Success,
        properties: Properties::default().into(),
    };
    connection.send(&Packet::PubRel(release)).await;
    assert!(matches!(connection.recv().await, Packet::PubComp(c) if c.packet_id == id(5)));

    connection
        .send(&inbound(
            Delivery::AtLeastOnce(PacketId::MAX),
            "alive check",
            b"payload",
        ))
        .await;
    assert!(matches!(connection.recv().await, Packet::PubAck(a) if a.packet_id == PacketId::MAX));
    client
        .disconnect(mqttlink::Disconnect::new())
        .await
        .unwrap();
}

#[actix_rt::test]
async fn broker_disconnect_fails_pending_publish() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = FakeBroker::bind().await;
    let client = ClientOptions::from_url(&broker.url())
        .unwrap()
        .client_id("kicked")
        .start()
        .unwrap();
    let mut connection = broker.accept().await;
    connection.handshake().await;

    let pending = client.publish(Publish::new("t".parse().unwrap(), "x").qos(QoS::AtLeastOnce));
    let broker_side = async {
        assert!(matches!(connection.recv().await, Packet::Publish(_)));
        let disconnect = Disconnect {
            reason: DisconnectReason::ServerShuttingDown,
            properties: Properties::default().into(),
        };
        connection.send(&Packet::Disconnect(disconnect)).await;
        connection.until_closed().await
    };
    let (result, _) = tokio::join!(pending, broker_side);
    assert!(
        matches!(
            result,
            Err(ClientError::ConnectionClosed(ClosedBy::Broker {
                reason: DisconnectReason::ServerShuttingDown,
                ..
            }))
        ),
        "{result:?}"
    );
    assert_actors_back_to(baseline).await;
}

#[actix_rt::test]
async fn unanswered_pingreq_closes_connection() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = FakeBroker::bind().await;
    let client = ClientOptions::from_url(&broker.url())
        .unwrap()
        .client_id("pinger")
        .protocol(ProtocolVersion::V3_1_1)
        .keep_alive(Duration::from_secs(1))
        .start()
        .unwrap();
    let mut connection = broker.accept().await;
    let connect = connection.handshake().await;
    assert_eq!(connect.keep_alive, 1);

    // The first PINGREQ is answered, the second is not.
    assert!(matches!(connection.recv().await, Packet::PingReq));
    connection.send(&Packet::PingResp).await;
    assert!(matches!(connection.recv().await, Packet::PingReq));
    assert!(connection.until_closed().await.is_empty());

    let late = client
        .publish(Publish::new("t".parse().unwrap(), "x"))
        .await;
    assert!(matches!(late, Err(ClientError::Stopped)), "{late:?}");
    assert_actors_back_to(baseline).await;
}

#[actix_rt::test]
async fn try_publish_fails_when_queue_full() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = FakeBroker::bind().await;
    let client = ClientOptions::from_url(&broker.url())
        .unwrap()
        .client_id("full")
        .max_pending_requests(2)
        .start()
        .unwrap();
    let mut connection = broker.accept().await;
    connection.expect_connect().await;

    let topic: mqttlink::codec::TopicName = "q".parse().unwrap();
    let first = client
        .try_publish(Publish::new(topic.clone(), "1"))
        .unwrap();
    let second = client
        .try_publish(Publish::new(topic.clone(), "2"))
        .unwrap();
    let third = client.try_publish(Publish::new(topic, "3"));
    assert!(matches!(third, Err(ClientError::QueueFull)));
    assert_eq!(
        client.stats().await.unwrap().queued_requests,
        2,
        "queued until CONNACK"
    );

    client
        .disconnect(mqttlink::Disconnect::new())
        .await
        .unwrap();
    assert!(matches!(first.await, Err(ClientError::Stopped)));
    assert!(matches!(second.await, Err(ClientError::Stopped)));
    assert_actors_back_to(baseline).await;
}

/// Fills a gate from [`Gate::start_closed`]: it blocks on QoS 1 message "a" and "b"
/// fills its mailbox. Both get their PUBACK.
async fn fill_gate(
    connection: &mut BrokerConnection,
    seen_rx: &mut tokio::sync::mpsc::UnboundedReceiver<Bytes>,
) {
    connection
        .send(&inbound(Delivery::AtLeastOnce(id(1)), "g", b"a"))
        .await;
    assert!(matches!(connection.recv().await, Packet::PubAck(a) if a.packet_id == id(1)));
    assert_eq!(&next(seen_rx).await[..], b"a");
    connection
        .send(&inbound(Delivery::AtLeastOnce(id(2)), "g", b"b"))
        .await;
    assert!(matches!(connection.recv().await, Packet::PubAck(a) if a.packet_id == id(2)));
}

/// Returns `true` once the client reports `expected` unacknowledged inbound messages,
/// or `false` when that does not happen within `STEP`.
async fn inflight_in_reaches(client: &mqttlink::Client, expected: usize) -> bool {
    let reached = async {
        while client.stats().await.unwrap().inflight_in != expected {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(STEP, reached).await.is_ok()
}

#[actix_rt::test]
async fn slow_recipient_delays_ack_until_delivered() {
    let _serial = SERIAL.lock().await;
    let broker = FakeBroker::bind().await;
    let client = ClientOptions::from_url(&broker.url())
        .unwrap()
        .client_id("slow")
        .start()
        .unwrap();
    let (gate, release, mut seen_rx) = Gate::start_closed();
    client.set_default_recipient(gate.recipient());
    let mut connection = broker.accept().await;
    connection.handshake().await;

    // The gate takes the first message and blocks on it. Its mailbox then holds one
    // more, so the third has to wait until the gate is released.
    let first = inbound(Delivery::AtLeastOnce(id(1)), "g", b"a");
    connection.send(&first).await;
    assert_eq!(&next(&mut seen_rx).await[..], b"a");
    for (packet_id, payload) in [(2, &b"b"[..]), (3, b"c")] {
        let publish = inbound(Delivery::AtLeastOnce(id(packet_id)), "g", payload);
        connection.send(&publish).await;
    }
    let mut acked = Vec::new();
    for _ in 0..2 {
        let Packet::PubAck(ack) = connection.recv().await else {
            panic!("expected PUBACK");
        };
        acked.push(ack.packet_id.get());
    }
    assert_eq!(acked, [1, 2]);
    // Once the third message arrived it stays unacknowledged until the gate opens.
    assert!(
        inflight_in_reaches(&client, 1).await,
        "the third message is not held for the slow recipient"
    );

    release.send(()).unwrap();
    assert!(matches!(connection.recv().await, Packet::PubAck(a) if a.packet_id == id(3)));
    assert_eq!(&next(&mut seen_rx).await[..], b"b");
    assert_eq!(&next(&mut seen_rx).await[..], b"c");
    client
        .disconnect(mqttlink::Disconnect::new())
        .await
        .unwrap();
}

/// Checks that a QoS 2 message waiting for room in a full mailbox counts as one of the
/// broker's unacknowledged messages, so the broker may send one more within a Receive
/// Maximum of 2 without being disconnected.
#[actix_rt::test]
async fn receive_maximum_counts_waiting_qos2_once() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = FakeBroker::bind().await;
    let client = ClientOptions::from_url(&broker.url())
        .unwrap()
        .client_id("waiting-qos2")
        .receive_maximum(2)
        .start()
        .unwrap();
    let (gate, release, mut seen_rx) = Gate::start_closed();
    client.set_default_recipient(gate.recipient());
    let mut connection = broker.accept().await;
    connection.handshake().await;

    fill_gate(&mut connection, &mut seen_rx).await;

    // "c" waits for room and "d" behind it, which makes two unacknowledged messages.
    // The PUBCOMP for a PUBREL of an unknown identifier shows that the client read both
    // and kept the connection.
    connection
        .send(&inbound(Delivery::ExactlyOnce(id(3)), "g", b"c"))
        .await;
    connection
        .send(&inbound(Delivery::AtLeastOnce(id(4)), "g", b"d"))
        .await;
    let unknown = PubRel {
        packet_id: id(99),
        reason: PubCompReason::Success,
        properties: Properties::default().into(),
    };
    connection.send(&Packet::PubRel(unknown)).await;
    let reply = connection.recv().await;
    if !matches!(&reply, Packet::PubComp(c) if c.packet_id == id(99)) {
        // A client that closed the connection stops by itself. Waiting for that keeps
        // its actors out of the counts of the next test.
        assert_actors_back_to(baseline).await;
        panic!("expected PUBCOMP, got {reply:?}");
    }

    release.send(()).unwrap();
    assert!(matches!(connection.recv().await, Packet::PubRec(r) if r.packet_id == id(3)));
    assert!(matches!(connection.recv().await, Packet::PubAck(a) if a.packet_id == id(4)));
    for payload in [&b"b"[..], b"c", b"d"] {
        assert_eq!(&next(&mut seen_rx).await[..], payload);
    }
    client
        .disconnect(mqttlink::Disconnect::new())
        .await
        .unwrap();
    assert_actors_back_to(baseline).await;
}

#[actix_rt::test]
async fn overlapping_copies_routed_by_automatic_identifier() {
    let _serial = SERIAL.lock().await;
    let broker = FakeBroker::bind().await;
    let client = ClientOptions::from_url(&broker.url())
        .unwrap()
        .client_id("copies")
        .start()
        .unwrap();
    let mut connection = broker.accept().await;
    connection.handshake().await;

    // Each subscribe gets its own identifier, which the broker echoes in its copies.
    let (single, mut single_rx) = forward::<Message>();
    let (multi, mut multi_rx) = forward::<Message>();
    let mut identifiers = Vec::new();
    for (recipient, filter) in [(single.recipient(), "a/+/c"), (multi.recipient(), "a/#")] {
        let request = Subscribe::new(recipient)
            .filter(filter.parse().unwrap(), SubscriptionOptions::default());
        let broker_side = async {
            let Packet::Subscribe(subscribe) = connection.recv().await else {
                panic!("expected SUBSCRIBE");
            };
            let ack = SubAck {
                packet_id: subscribe.packet_id,
                reasons: vec![SubAckReason::GrantedQoS0],
                properties: Properties::default().into(),
            };
            connection.send(&Packet::SubAck(ack)).await;
            subscribe.properties.into_inner().subscription_identifiers
        };
        let (outcome, sent) = tokio::join!(client.subscribe(request), broker_side);
        outcome.unwrap();
        assert_eq!(sent.len(), 1, "one automatic identifier per subscribe");
        identifiers.push(sent[0]);
    }
    assert_ne!(identifiers[0], identifiers[1]);

    for (identifier, payload) in [
        (identifiers[0], &b"copy for a/+/c"[..]),
        (identifiers[1], b"copy for a/#"),
    ] {
        let mut copy = inbound(Delivery::AtMostOnce, "a/b/c", b"");
        if let Packet::Publish(publish) = &mut copy {
            publish.properties.subscription_identifiers = vec![identifier];
            publish.payload = Bytes::copy_from_slice(payload);
        }
        connection.send(&copy).await;
    }
    connection
        .send(&inbound(Delivery::AtMostOnce, "a/x", b"only a/#"))
        .await;

    assert_eq!(&next(&mut single_rx).await.payload[..], b"copy for a/+/c");
    assert_eq!(&next(&mut multi_rx).await.payload[..], b"copy for a/#");
    assert_eq!(&next(&mut multi_rx).await.payload[..], b"only a/#");
    client
        .disconnect(mqttlink::Disconnect::new())
        .await
        .unwrap();
    assert!(single_rx.try_recv().is_err(), "no second copy for a/+/c");
}

#[actix_rt::test]
async fn publish_waits_for_room_in_queue() {
    let _serial = SERIAL.lock().await;
    let broker = FakeBroker::bind().await;
    let client = ClientOptions::from_url(&broker.url())
        .unwrap()
        .client_id("waiter")
        .max_pending_requests(1)
        .start()
        .unwrap();
    let mut connection = broker.accept().await;
    connection.handshake().await;

    let topic: mqttlink::codec::TopicName = "w".parse().unwrap();
    let first = client.publish(Publish::new(topic.clone(), "1").qos(QoS::AtLeastOnce));
    let second = client.publish(Publish::new(topic, "2").qos(QoS::AtLeastOnce));
    let broker_side = async {
        let Packet::Publish(publish) = connection.recv().await else {
            panic!("expected PUBLISH");
        };
        assert_eq!(&publish.payload[..], b"1");
        let stats = client.stats().await.unwrap();
        assert_eq!(stats.inflight_out, 1);
        assert_eq!(
            stats.queued_requests, 0,
            "the second waits for room before queueing"
        );

        connection
            .send(&puback(publish.delivery.packet_id().unwrap()))
            .await;
        let Packet::Publish(publish) = connection.recv().await else {
            panic!("expected PUBLISH");
        };
        assert_eq!(&publish.payload[..], b"2");
        connection
            .send(&puback(publish.delivery.packet_id().unwrap()))
            .await;
    };
    let (first, second, ()) = tokio::join!(first, second, broker_side);
    assert_eq!(first.unwrap().reason, Some(PubAckReason::Success));
    assert_eq!(second.unwrap().reason, Some(PubAckReason::Success));
    client
        .disconnect(mqttlink::Disconnect::new())
        .await
        .unwrap();
}

#[actix_rt::test]
async fn malformed_packet_closes_with_reason_per_version() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    for (protocol, expected) in [
        (ProtocolVersion::V5, Some(DisconnectReason::MalformedPacket)),
        (ProtocolVersion::V3_1_1, None),
    ] {
        let broker = FakeBroker::bind().await;
        let client = ClientOptions::from_url(&broker.url())
            .unwrap()
            .client_id("malformed")
            .protocol(protocol)
            .start()
            .unwrap();
        let mut connection = broker.accept().await;
        connection.handshake().await;

        // A PUBACK whose remaining length ends inside the packet identifier.
        connection.send_raw(&[0x40, 0x01, 0x00]).await;
        let sent = connection.until_closed().await;
        let reason = sent.iter().find_map(|packet| match packet {
            Packet::Disconnect(disconnect) => Some(disconnect.reason),
            _ => None,
        });
        assert_eq!(reason, expected, "{protocol:?} sent {sent:?}");
        drop(client);
    }
    assert_actors_back_to(baseline).await;
}

/// Checks that connect and disconnect cycles, each leaving a message waiting for room
/// in a recipient that never drains its mailbox, end every time with the broker seeing
/// the connection closed and the live actor count back at its baseline.
#[actix_rt::test]
async fn cycles_with_full_mailbox_leak_nothing() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = FakeBroker::bind().await;
    for cycle in 0..5 {
        let client = ClientOptions::from_url(&broker.url())
            .unwrap()
            .client_id("full-mailbox-cycles")
            .start()
            .unwrap();
        let (gate, _release, mut seen_rx) = Gate::start_closed();
        client.set_default_recipient(gate.recipient());
        let mut connection = broker.accept().await;
        connection.handshake().await;

        // With the gate full, "c" waits for room.
        fill_gate(&mut connection, &mut seen_rx).await;
        connection
            .send(&inbound(Delivery::AtLeastOnce(id(3)), "g", b"c"))
            .await;
        assert!(
            inflight_in_reaches(&client, 1).await,
            "cycle {cycle}: c does not wait for room"
        );

        let disconnected =
            tokio::time::timeout(STEP, client.disconnect(mqttlink::Disconnect::new()))
                .await
                .expect("disconnect resolves in time");
        assert!(disconnected.is_ok(), "cycle {cycle}: {disconnected:?}");
        let rest = connection.until_closed().await;
        assert!(
            matches!(rest.as_slice(), [Packet::Disconnect(_)]),
            "cycle {cycle}: expected only DISCONNECT, got {rest:?}"
        );
        assert_actors_back_to(baseline).await;
    }
}
