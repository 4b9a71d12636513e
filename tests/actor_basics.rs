//! The client's actors against a scripted fake broker on the loopback interface:
//! handshake, publish and subscribe flows, failures, and that nothing outlives a client.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "support/actor_broker.rs"]
mod actor_broker;

use std::time::Duration;

use actor_broker::{assert_actors_back_to, forward, next, FakeBroker, STEP};
use mqttlink::codec::{
    ConnectReason, Delivery, DisconnectReason, Packet, PacketId, Properties, ProtocolVersion,
    PubAck, PubAckReason, PubComp, PubCompReason, PubRec, QoS, SubAck, SubAckReason,
    SubscriptionOptions,
};
use mqttlink::{
    live_actor_count, Client, ClientError, ClientOptions, DisconnectCause, Event, Publish,
    Subscribe,
};

/// `live_actor_count` is process-wide, so the tests of this file run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn start(broker: &FakeBroker, protocol: ProtocolVersion) -> Client {
    ClientOptions::from_url(&broker.url())
        .unwrap()
        .client_id("actor-test")
        .protocol(protocol)
        .start()
        .unwrap()
}

fn id(value: u16) -> PacketId {
    PacketId::try_from(value).unwrap()
}

fn topic(name: &str) -> mqttlink::codec::TopicName {
    name.parse().unwrap()
}

#[actix_rt::test]
async fn connects_with_each_version() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    for protocol in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let broker = FakeBroker::bind().await;
        let client = start(&broker, protocol);
        let (events, mut event_rx) = forward::<Event>();
        client.subscribe_events(events.recipient());

        let mut connection = broker.accept().await;
        let connect = connection.handshake().await;
        assert_eq!(connect.protocol, protocol);
        assert_eq!(connect.client_id.as_str(), "actor-test");
        assert!(matches!(
            next(&mut event_rx).await,
            Event::Connected {
                session_present: false,
                ..
            }
        ));
        assert_eq!(client.stats().await.unwrap().live_actors, baseline + 4);

        client
            .disconnect(mqttlink::Disconnect::new())
            .await
            .unwrap();
        let rest = connection.until_closed().await;
        assert!(
            matches!(rest.last(), Some(Packet::Disconnect(_))),
            "sent {rest:?}"
        );
        assert!(matches!(
            next(&mut event_rx).await,
            Event::Disconnected {
                reason: DisconnectCause::Requested
            }
        ));
    }
    assert_actors_back_to(baseline).await;
}

#[actix_rt::test]
async fn publish_round_trips_for_each_qos() {
    let _serial = SERIAL.lock().await;
    let broker = FakeBroker::bind().await;
    let client = start(&broker, ProtocolVersion::V5);
    let mut connection = broker.accept().await;
    connection.handshake().await;

    let qos0 = client.publish(Publish::new(topic("t/0"), "zero"));
    let (outcome, packet) = tokio::join!(qos0, connection.recv());
    assert_eq!(outcome.unwrap().reason, None);
    assert!(
        matches!(packet, Packet::Publish(p) if p.delivery == Delivery::AtMostOnce && &p.payload[..] == b"zero")
    );

    let qos1 = client.publish(Publish::new(topic("t/1"), "one").qos(QoS::AtLeastOnce));
    let broker_side = async {
        let Packet::Publish(publish) = connection.recv().await else {
            panic!("expected PUBLISH");
        };
        let packet_id = publish.delivery.packet_id().unwrap();
        let ack = PubAck {
            packet_id,
            reason: PubAckReason::Success,
            properties: Properties::default().into(),
        };
        connection.send(&Packet::PubAck(ack)).await;
    };
    let (outcome, ()) = tokio::join!(qos1, broker_side);
    assert_eq!(outcome.unwrap().reason, Some(PubAckReason::Success));

    let qos2 = client.publish(Publish::new(topic("t/2"), "two").qos(QoS::ExactlyOnce));
    let broker_side = async {
        let Packet::Publish(publish) = connection.recv().await else {
            panic!("expected PUBLISH");
        };
        let packet_id = publish.delivery.packet_id().unwrap();
        let rec = PubRec {
            packet_id,
            reason: PubAckReason::Success,
            properties: Properties::default().into(),
        };
        connection.send(&Packet::PubRec(rec)).await;
        assert!(matches!(connection.recv().await, Packet::PubRel(r) if r.packet_id == packet_id));
        let comp = PubComp {
            packet_id,
            reason: PubCompReason::Success,
            properties: Properties::default().into(),
        };
        connection.send(&Packet::PubComp(comp)).await;
    };
    let (outcome, ()) = tokio::join!(qos2, broker_side);
    assert_eq!(outcome.unwrap().reason, Some(PubAckReason::Success));

    let stats = client.stats().await.unwrap();
    assert_eq!(stats.inflight_out, 0);
    assert_eq!(
        stats.packets_out, 5,
        "CONNECT, three PUBLISH and one PUBREL"
    );
    client
        .disconnect(mqttlink::Disconnect::new())
        .await
        .unwrap();
}

#[actix_rt::test]
async fn wildcard_subscriptions_deliver_to_both_recipients() {
    let _serial = SERIAL.lock().await;
    let broker = FakeBroker::bind().await;
    let client = start(&broker, ProtocolVersion::V3_1_1);
    let mut connection = broker.accept().await;
    connection.handshake().await;

    let (first, mut first_rx) = forward::<mqttlink::Message>();
    let (second, mut second_rx) = forward::<mqttlink::Message>();
    for (recipient, filter) in [(first.recipient(), "a/+"), (second.recipient(), "a/#")] {
        let options = SubscriptionOptions::with_qos(QoS::AtLeastOnce);
        let request = Subscribe::new(recipient).filter(filter.parse().unwrap(), options);
        let broker_side = async {
            let Packet::Subscribe(subscribe) = connection.recv().await else {
                panic!("expected SUBSCRIBE");
            };
            assert_eq!(subscribe.filters[0].0.as_str(), filter);
            let ack = SubAck {
                packet_id: subscribe.packet_id,
                reasons: vec![SubAckReason::GrantedQoS1],
                properties: Properties::default().into(),
            };
            connection.send(&Packet::SubAck(ack)).await;
        };
        let (outcome, ()) = tokio::join!(client.subscribe(request), broker_side);
        assert_eq!(outcome.unwrap().reasons, [SubAckReason::GrantedQoS1]);
    }

    let publish = mqttlink::codec::Publish {
        dup: false,
        delivery: Delivery::AtLeastOnce(id(77)),
        retain: false,
        topic: Some(topic("a/b")),
        properties: Properties::default().into(),
        payload: bytes::Bytes::from_static(b"both"),
    };
    connection.send(&Packet::Publish(publish)).await;
    assert_eq!(&next(&mut first_rx).await.payload[..], b"both");
    assert_eq!(&next(&mut second_rx).await.payload[..], b"both");
    assert!(matches!(connection.recv().await, Packet::PubAck(a) if a.packet_id == id(77)));

    client
        .disconnect(mqttlink::Disconnect::new())
        .await
        .unwrap();
}

#[actix_rt::test]
async fn connack_refusal_reaches_caller_and_listener() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = FakeBroker::bind().await;
    let client = start(&broker, ProtocolVersion::V5);
    let (events, mut event_rx) = forward::<Event>();
    client.subscribe_events(events.recipient());
    let pending = client.publish(Publish::new(topic("t"), "x").qos(QoS::AtLeastOnce));

    let mut connection = broker.accept().await;
    let broker_side = async {
        connection.expect_connect().await;
        connection
            .connack(ConnectReason::NotAuthorized, Properties::default())
            .await;
        connection.until_closed().await
    };
    let (result, sent_after) = tokio::join!(pending, broker_side);
    assert!(
        matches!(
            result,
            Err(ClientError::ConnectRefused {
                reason: ConnectReason::NotAuthorized,
                ..
            })
        ),
        "{result:?}"
    );
    assert!(
        sent_after.is_empty(),
        "nothing after a refused CONNACK: {sent_after:?}"
    );
    assert!(matches!(
        next(&mut event_rx).await,
        Event::Disconnected {
            reason: DisconnectCause::Failed(ClientError::ConnectRefused { .. })
        }
    ));
    assert_actors_back_to(baseline).await;
}

#[actix_rt::test]
async fn protocol_violation_sends_disconnect_and_closes() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = FakeBroker::bind().await;
    let client = start(&broker, ProtocolVersion::V5);
    let (events, mut event_rx) = forward::<Event>();
    client.subscribe_events(events.recipient());
    let mut connection = broker.accept().await;
    connection.handshake().await;

    connection
        .connack(ConnectReason::Success, Properties::default())
        .await;
    let sent = connection.until_closed().await;
    assert!(
        matches!(&sent[..], [Packet::Disconnect(d)] if d.reason == DisconnectReason::ProtocolError),
        "sent {sent:?}"
    );
    loop {
        if let Event::Disconnected { reason } = next(&mut event_rx).await {
            assert!(matches!(
                reason,
                DisconnectCause::Failed(ClientError::ProtocolViolation(_))
            ));
            break;
        }
    }
    let late = client.publish(Publish::new(topic("t"), "x")).await;
    assert!(matches!(late, Err(ClientError::Stopped)), "{late:?}");
    assert_actors_back_to(baseline).await;
}

#[actix_rt::test]
async fn disconnect_during_connect_stops_everything() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = FakeBroker::bind().await;
    let client = start(&broker, ProtocolVersion::V5);
    let mut connection = broker.accept().await;
    connection.expect_connect().await;

    tokio::time::timeout(STEP, client.disconnect(mqttlink::Disconnect::new()))
        .await
        .expect("disconnect resolves in time")
        .unwrap();
    assert!(connection.until_closed().await.is_empty());
    assert_actors_back_to(baseline).await;
}

#[actix_rt::test]
async fn dropping_last_handle_stops_everything() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = FakeBroker::bind().await;
    let client = start(&broker, ProtocolVersion::V3_1_1);
    let copy = client.clone();
    let (events, mut event_rx) = forward::<Event>();
    client.subscribe_events(events.recipient());
    let mut connection = broker.accept().await;
    connection.handshake().await;
    assert!(matches!(next(&mut event_rx).await, Event::Connected { .. }));
    assert_eq!(client.stats().await.unwrap().live_actors, baseline + 4);

    drop(client);
    drop(copy);
    connection.until_closed().await;
    assert!(matches!(
        next(&mut event_rx).await,
        Event::Disconnected {
            reason: DisconnectCause::Requested
        }
    ));
    assert_actors_back_to(baseline).await;
}

#[actix_rt::test]
async fn connect_failure_reaches_pending_caller() {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let client = ClientOptions::new("127.0.0.1", port)
        .client_id("nobody-listens")
        .connect_timeout(Duration::from_secs(5))
        .start()
        .unwrap();
    let result = tokio::time::timeout(STEP, client.publish(Publish::new(topic("t"), "x")))
        .await
        .expect("fails in time");
    let error = result.expect_err("nothing listens on the port");
    assert!(
        matches!(error, ClientError::ConnectFailed { .. }),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        format!("failed to connect to the broker at 127.0.0.1:{port}")
    );
    assert_actors_back_to(baseline).await;
}
