//! Socket leak checks of the client's actors against the scripted fake broker.
//!
//! They count the open file descriptors of the whole process. Every test runtime opens
//! descriptors of its own when it starts, so a test running in parallel would move the
//! count: this binary therefore has a single test that runs the checks one after another.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "support/actor_broker.rs"]
mod actor_broker;

use actor_broker::{FakeBroker, STEP};
use mqttlink::codec::{Packet, PacketId, Properties, PubAck, PubAckReason, QoS};
use mqttlink::{ClientOptions, Publish};

#[actix_rt::test]
async fn client_sockets_closed_after_use() {
    sockets_closed_after_disconnect().await;
    acknowledged_flood_leaves_no_socket().await;
}

fn puback(packet_id: PacketId) -> Packet {
    Packet::PubAck(PubAck {
        packet_id,
        reason: PubAckReason::Success,
        properties: Properties::default().into(),
    })
}

/// Counts the open file descriptors of this process.
fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

async fn sockets_closed_after_disconnect() {
    let broker = FakeBroker::bind().await;
    let baseline = open_descriptors();
    let client = ClientOptions::from_url(&broker.url())
        .unwrap()
        .client_id("fds")
        .start()
        .unwrap();
    let mut connection = broker.accept().await;
    connection.handshake().await;
    client
        .disconnect(mqttlink::Disconnect::new())
        .await
        .unwrap();
    connection.until_closed().await;
    drop(connection);
    drop(client);

    let settled = async {
        while open_descriptors() > baseline {
            tokio::task::yield_now().await;
        }
    };
    let settled = tokio::time::timeout(STEP, settled).await;
    assert!(
        settled.is_ok(),
        "{} descriptors open, {baseline} before",
        open_descriptors()
    );
}

async fn acknowledged_flood_leaves_no_socket() {
    let broker = FakeBroker::bind().await;
    let baseline = open_descriptors();
    let client = ClientOptions::from_url(&broker.url())
        .unwrap()
        .client_id("flood")
        .max_pending_requests(64)
        .start()
        .unwrap();
    let mut connection = broker.accept().await;
    connection.handshake().await;

    let topic: mqttlink::codec::TopicName = "flood".parse().unwrap();
    let mut replies = Vec::new();
    for index in 0..1_000 {
        let publish = Publish::new(topic.clone(), format!("{index}")).qos(QoS::AtLeastOnce);
        if let Ok(reply) = client.try_publish(publish) {
            replies.push(reply);
        }
    }
    assert!(!replies.is_empty());
    assert!(replies.len() <= 64, "{} accepted", replies.len());

    let accepted = replies.len();
    let broker_side = async {
        for _ in 0..accepted {
            let Packet::Publish(publish) = connection.recv().await else {
                panic!("expected PUBLISH");
            };
            connection
                .send(&puback(publish.delivery.packet_id().unwrap()))
                .await;
        }
    };
    let callers = async {
        for reply in replies {
            reply.await.unwrap();
        }
    };
    tokio::join!(broker_side, callers);

    client
        .disconnect(mqttlink::Disconnect::new())
        .await
        .unwrap();
    connection.until_closed().await;
    drop(connection);
    drop(client);
    let settled = async {
        while open_descriptors() > baseline {
            tokio::task::yield_now().await;
        }
    };
    let settled = tokio::time::timeout(STEP, settled).await;
    assert!(
        settled.is_ok(),
        "{} descriptors open, {baseline} before",
        open_descriptors()
    );
}
