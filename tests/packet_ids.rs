//! Packet identifier exhaustion against a scripted broker that never acknowledges.
//!
//! PUBLISH, SUBSCRIBE and UNSUBSCRIBE share one identifier space of 65,535 values, and
//! 0 is never used. With every identifier in flight, new requests must wait in the
//! queue without failing and without being sent. Acknowledging one identifier lets
//! exactly one waiting request go, with that identifier. After a cut, the resumed
//! session sends the unacknowledged publishes again in the order first sent, although
//! the identifiers wrapped.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "support/actor_broker.rs"]
mod actor_broker;
#[path = "support/reconnect_broker.rs"]
mod reconnect_broker;

use std::alloc::System;
use std::collections::BTreeSet;
use std::time::Duration;

use actor_broker::{assert_actors_back_to, forward, STEP};
use mqttlink::codec::{
    Packet, PacketId, Properties, PubAck, PubAckReason, QoS, SubAck, SubAckReason,
    SubscriptionOptions, TopicName,
};
use mqttlink::{
    live_actor_count, Client, ClientError, ClientOptions, Disconnect, Publish, PublishOutcome,
    Subscribe,
};
use reconnect_broker::{Connection, ScriptedBroker};
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};

/// Every packet identifier there is.
const ALL_IDS: usize = u16::MAX as usize;

/// Allocations allowed in the whole process while every request waits for an identifier
/// through ten minutes of paused time, advanced one second at a time, and 1,600 yields
/// to the actors.
const MAX_IDLE_ALLOCATIONS: usize = 64;

#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn topic(name: &str) -> TopicName {
    name.parse().unwrap()
}

fn expect_publish(packet: Packet) -> mqttlink::codec::Publish {
    match packet {
        Packet::Publish(publish) => publish,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

/// Queues a QoS 1 publish, letting the supervisor drain its mailbox whenever it is full,
/// and returns the future of its outcome.
async fn queue_publish(
    client: &Client,
    payload: String,
) -> impl std::future::Future<Output = Result<PublishOutcome, ClientError>> {
    // The mailbox accepts at most 4,096 messages, so about one call in 4,096 finds it
    // full. The bound only stops a client that never drains it.
    for _ in 0..1_000 {
        let publish = Publish::new(topic("ids/flood"), payload.clone()).qos(QoS::AtLeastOnce);
        match client.try_publish(publish) {
            Ok(pending) => return pending,
            Err(ClientError::QueueFull) => {
                client.stats().await.unwrap();
            }
            Err(error) => panic!("publish {payload} failed: {error}"),
        }
    }
    panic!("publish {payload} found the queue full 1,000 times");
}

/// Lets the client's actors handle every message they have, by yielding to them a
/// bounded number of times.
async fn let_actors_run() {
    for _ in 0..1_000 {
        tokio::task::yield_now().await;
    }
}

async fn puback(connection: &mut Connection, packet_id: PacketId) {
    connection
        .send(&Packet::PubAck(PubAck {
            packet_id,
            reason: PubAckReason::Success,
            properties: Properties::default().into(),
        }))
        .await;
}

#[actix_rt::test]
async fn exhausted_ids_make_requests_wait() {
    let baseline = live_actor_count();
    let broker = ScriptedBroker::bind().await;
    let client = ClientOptions::new("127.0.0.1", broker.port())
        .client_id("packet-ids")
        .keep_alive(Duration::ZERO)
        .max_inflight(u16::MAX)
        .max_pending_requests(ALL_IDS + 16)
        .disconnect_timeout(Duration::from_millis(1))
        .reconnect(true)
        .reconnect_backoff(Duration::from_millis(1), Duration::from_millis(1))
        .resume_on_reconnect(true)
        .session_expiry(Duration::from_secs(60))
        .start()
        .unwrap();
    let mut connection = broker.accept().await;
    connection.accept_connect(false).await;

    let mut pending = Vec::with_capacity(ALL_IDS);
    for index in 0..ALL_IDS {
        pending.push(queue_publish(&client, index.to_string()).await);
    }
    let mut ids = BTreeSet::new();
    let mut ids_by_payload = Vec::with_capacity(ALL_IDS);
    for index in 0..ALL_IDS {
        let publish = expect_publish(connection.recv().await);
        let id = publish
            .delivery
            .packet_id()
            .expect("QoS 1 has an identifier");
        assert_eq!(
            publish.payload,
            index.to_string(),
            "publishes leave in order"
        );
        assert!(
            ids.insert(id.get()),
            "identifier {id} reused while in flight"
        );
        ids_by_payload.push(id);
    }
    assert_eq!(ids.len(), ALL_IDS);
    assert_eq!(ids.first(), Some(&1), "identifier 0 is never used");
    assert_eq!(ids.last(), Some(&u16::MAX));

    // Every identifier is in flight: a publish, a subscribe and an unsubscribe wait.
    let waiting_publish = actix_rt::spawn(queue_publish(&client, "waiting".to_owned()).await);
    let (recipient, _messages) = forward::<mqttlink::Message>();
    let subscribe = Subscribe::new(recipient.recipient()).filter(
        "ids/#".parse().unwrap(),
        SubscriptionOptions::with_qos(QoS::AtLeastOnce),
    );
    let subscriber = client.clone();
    let waiting_subscribe = actix_rt::spawn(async move { subscriber.subscribe(subscribe).await });
    let unsubscriber = client.clone();
    let unsubscribe = mqttlink::Unsubscribe::new().filter("ids/old".parse().unwrap());
    let waiting_unsubscribe =
        actix_rt::spawn(async move { unsubscriber.unsubscribe(unsubscribe).await });
    let_actors_run().await;
    let stats = client.stats().await.unwrap();
    assert_eq!(stats.queued_requests, 3, "every request waits in the queue");
    assert_eq!(stats.inflight_out, ALL_IDS);
    let packets_out = stats.packets_out;

    // Time passing changes nothing: no packet, no failure, and no work. A client that
    // polled for a free identifier, by timer or by messages to itself, would allocate
    // on every round (actix boxes each message), so the allocations count its work.
    tokio::time::pause();
    let allocations_before = ALLOCATOR.stats().allocations;
    // Advancing one second at a time lets every timer due on the way fire.
    for _ in 0..600 {
        tokio::time::advance(Duration::from_secs(1)).await;
        tokio::task::yield_now().await;
    }
    let_actors_run().await;
    let allocations = ALLOCATOR.stats().allocations - allocations_before;
    println!("allocations while waiting for a packet identifier: {allocations}");
    assert!(
        allocations <= MAX_IDLE_ALLOCATIONS,
        "{allocations} allocations while every request waits"
    );
    let stats = client.stats().await.unwrap();
    assert_eq!(
        stats.packets_out, packets_out,
        "nothing is sent while waiting"
    );
    assert_eq!(stats.queued_requests, 3);
    assert!(
        !waiting_unsubscribe.is_finished(),
        "the waiting unsubscribe has no result yet"
    );
    assert!(
        !waiting_publish.is_finished(),
        "the waiting publish has no result yet"
    );
    assert!(
        !waiting_subscribe.is_finished(),
        "the waiting subscribe has no result yet"
    );
    tokio::time::resume();

    // Freeing one identifier lets exactly the first waiting request go, with that
    // identifier.
    let freed = ids_by_payload[1_000];
    puback(&mut connection, freed).await;
    let resent = expect_publish(connection.recv().await);
    assert_eq!(resent.payload, "waiting");
    assert_eq!(resent.delivery.packet_id(), Some(freed));
    let_actors_run().await;
    let stats = client.stats().await.unwrap();
    assert_eq!(
        stats.queued_requests, 2,
        "the subscribe and unsubscribe still wait"
    );
    assert_eq!(stats.packets_out, packets_out + 1, "only one packet left");

    // Freeing a second identifier lets the subscribe go, with that identifier.
    let freed = ids_by_payload[2_000];
    puback(&mut connection, freed).await;
    let subscribe = match connection.recv().await {
        Packet::Subscribe(subscribe) => subscribe,
        other => panic!("expected SUBSCRIBE, got {other:?}"),
    };
    assert_eq!(subscribe.packet_id, freed);
    let_actors_run().await;
    let stats = client.stats().await.unwrap();
    assert_eq!(stats.queued_requests, 1, "the unsubscribe still waits");
    connection
        .send(&Packet::SubAck(SubAck {
            packet_id: subscribe.packet_id,
            reasons: vec![SubAckReason::GrantedQoS1],
            properties: Properties::default().into(),
        }))
        .await;
    tokio::time::timeout(STEP, waiting_subscribe)
        .await
        .expect("subscribe resolves in time")
        .unwrap()
        .expect("subscribe succeeds");

    // SUBACK freed the subscribe's identifier, which lets the unsubscribe go with it.
    let unsubscribe = match connection.recv().await {
        Packet::Unsubscribe(unsubscribe) => unsubscribe,
        other => panic!("expected UNSUBSCRIBE, got {other:?}"),
    };
    assert_eq!(unsubscribe.packet_id, subscribe.packet_id);
    connection
        .send(&Packet::UnsubAck(mqttlink::codec::UnsubAck {
            packet_id: unsubscribe.packet_id,
            reasons: vec![mqttlink::codec::UnsubAckReason::Success],
            properties: Properties::default().into(),
        }))
        .await;
    tokio::time::timeout(STEP, waiting_unsubscribe)
        .await
        .expect("unsubscribe resolves in time")
        .unwrap()
        .expect("unsubscribe succeeds");
    assert_eq!(client.stats().await.unwrap().queued_requests, 0);

    // The first acknowledged publish completed with success.
    let first = pending.swap_remove(1_000);
    assert!(tokio::time::timeout(STEP, first).await.unwrap().is_ok());
    drop(pending);

    // After a cut, the resumed session gets every unacknowledged PUBLISH again in the
    // order first sent [MQTT-4.6.0-1], although "waiting" reused a lower identifier.
    connection.cut();
    let mut resumed = broker.accept().await;
    resumed.accept_connect(true).await;
    let mut resent_order = Vec::with_capacity(ALL_IDS);
    for _ in 0..ALL_IDS - 1 {
        let publish = expect_publish(resumed.recv().await);
        assert!(publish.dup, "resent PUBLISH carries DUP");
        resent_order.push(String::from_utf8(publish.payload.to_vec()).unwrap());
    }
    let mut expected_order: Vec<String> = (0..ALL_IDS)
        .filter(|index| ![1_000, 2_000].contains(index))
        .map(|index| index.to_string())
        .collect();
    expected_order.push("waiting".to_owned());
    let first_difference = resent_order
        .iter()
        .zip(&expected_order)
        .position(|(resent, expected)| resent != expected);
    assert_eq!(
        first_difference, None,
        "resend order differs from send order at position {first_difference:?}"
    );

    // The rest never gets an acknowledgement, so the disconnect ends them with Stopped.
    tokio::time::timeout(STEP, client.disconnect(Disconnect::new()))
        .await
        .expect("disconnect resolves in time")
        .unwrap();
    let outcome = tokio::time::timeout(STEP, waiting_publish)
        .await
        .expect("waiting publish resolves in time")
        .unwrap();
    assert!(
        matches!(outcome, Err(ClientError::Stopped)),
        "unacknowledged publish ends with Stopped, got {outcome:?}"
    );
    drop(client);
    assert_actors_back_to(baseline).await;
}
