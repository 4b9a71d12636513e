//! The session actor's one long-lived driver future against the scripted fake broker:
//! deliveries that wait for room in a full mailbox, requests and acknowledgements
//! while the stream is busy, and disconnects queued behind requests. Keep-alive is off
//! where a lost wake-up could otherwise be hidden by the keep-alive timer.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "support/actor_broker.rs"]
mod actor_broker;
#[path = "support/slow_recipient.rs"]
mod slow_recipient;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actor_broker::{assert_actors_back_to, next, FakeBroker, Gate, STEP};
use bytes::{Bytes, BytesMut};
use mqttlink::codec::{
    encode, ConnAck, ConnectReason, Decoder, Delivery, Packet, PacketId, Properties,
    ProtocolVersion, PubAck, PubAckReason, PubCompReason, PubRel, QoS,
};
use mqttlink::{live_actor_count, ClientOptions, Message, Publish};
use slow_recipient::SlowRecipient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// `live_actor_count` is process-wide, so the tests of this file run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn id(value: u16) -> PacketId {
    PacketId::try_from(value).unwrap()
}

fn inbound(delivery: Delivery, topic: &str, payload: Bytes) -> Packet {
    Packet::Publish(mqttlink::codec::Publish {
        dup: false,
        delivery,
        retain: false,
        topic: Some(topic.parse().unwrap()),
        properties: Properties::default().into(),
        payload,
    })
}

fn encoded(packet: &Packet) -> BytesMut {
    let mut out = BytesMut::new();
    encode(packet, ProtocolVersion::V5, u32::MAX, &mut out).unwrap();
    out
}

fn numbered(index: usize) -> Bytes {
    Bytes::from(index.to_string())
}

/// Checks that QoS 1 and 2 messages to a recipient whose mailbox gets room from another
/// thread all arrive in order and are all acknowledged. Keep-alive is off, so no timer
/// wakes a session that missed the wake-up of a send.
#[actix_rt::test]
async fn other_thread_recipient_gets_all_in_order() {
    run_other_thread_recipient(8, 40, Duration::from_micros(300)).await;
}

/// Checks the same with a recipient that takes each message at once, so a mailbox
/// often gets room between the read that filled it and the session's next poll.
#[actix_rt::test]
async fn fast_other_thread_recipient_gets_all() {
    run_other_thread_recipient(64, 200, Duration::ZERO).await;
}

/// Sends `windows` bursts of `window` QoS 1 and 2 messages to a recipient in another
/// arbiter that sleeps `pause` per message. Every message must be acknowledged before
/// the next burst, and all must arrive in order.
async fn run_other_thread_recipient(window: u16, windows: usize, pause: Duration) {
    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = FakeBroker::bind().await;
    let client = ClientOptions::from_url(&broker.url())
        .unwrap()
        .client_id("other-thread")
        .keep_alive(Duration::ZERO)
        .receive_maximum(window)
        .start()
        .unwrap();
    let (slow, mut seen_rx) = SlowRecipient::start(pause);
    client.set_default_recipient(slow.recipient.clone());
    let mut connection = broker.accept().await;
    connection.handshake().await;

    let mut sent = 0;
    for round in 0..windows {
        let mut burst = BytesMut::new();
        for packet_id in 1..=window {
            let delivery = if packet_id % 2 == 0 {
                Delivery::ExactlyOnce(id(packet_id))
            } else {
                Delivery::AtLeastOnce(id(packet_id))
            };
            burst.extend_from_slice(&connection.encode(&inbound(delivery, "t", numbered(sent))));
            sent += 1;
        }
        connection.send_raw(&burst).await;

        let mut completed = 0;
        while completed < window {
            match connection.recv().await {
                Packet::PubRec(rec) => {
                    let release = PubRel {
                        packet_id: rec.packet_id,
                        reason: PubCompReason::Success,
                        properties: Properties::default().into(),
                    };
                    connection.send(&Packet::PubRel(release)).await;
                }
                Packet::PubAck(_) | Packet::PubComp(_) => completed += 1,
                other => panic!("burst {round}: expected an acknowledgement, got {other:?}"),
            }
        }
    }

    for index in 0..sent {
        assert_eq!(next(&mut seen_rx).await, numbered(index), "message {index}");
    }
    slow.finish(&client, baseline).await;
}

/// Checks that QoS 0 messages behind a full mailbox are kept, not dropped, while fewer
/// than the backlog limit of 1,024 wait, and that a QoS 1 message behind them is
/// acknowledged once the recipient took it.
#[actix_rt::test]
async fn qos0_below_backlog_limit_kept() {
    const WAITING: usize = 1000;

    let _serial = SERIAL.lock().await;
    let broker = FakeBroker::bind().await;
    let client = ClientOptions::from_url(&broker.url())
        .unwrap()
        .client_id("qos0-backlog")
        .keep_alive(Duration::ZERO)
        .start()
        .unwrap();
    let (gate, release, mut seen_rx) = Gate::start_closed();
    client.set_default_recipient(gate.recipient());
    let mut connection = broker.accept().await;
    connection.handshake().await;

    // The gate blocks on message 0, message 1 fills its mailbox, and the rest wait.
    connection
        .send(&inbound(Delivery::AtMostOnce, "g", numbered(0)))
        .await;
    assert_eq!(next(&mut seen_rx).await, numbered(0));
    let mut burst = BytesMut::new();
    for index in 1..=WAITING + 1 {
        let packet = inbound(Delivery::AtMostOnce, "g", numbered(index));
        burst.extend_from_slice(&connection.encode(&packet));
    }
    let marker = inbound(Delivery::AtLeastOnce(id(7)), "g", numbered(WAITING + 2));
    burst.extend_from_slice(&connection.encode(&marker));
    connection.send_raw(&burst).await;

    release.send(()).unwrap();
    for index in 1..=WAITING + 2 {
        assert_eq!(next(&mut seen_rx).await, numbered(index), "message {index}");
    }
    assert!(matches!(connection.recv().await, Packet::PubAck(a) if a.packet_id == id(7)));
    assert_eq!(client.stats().await.unwrap().dropped_messages, 0);
    client
        .disconnect(mqttlink::Disconnect::new())
        .await
        .unwrap();
}

/// A broker on a raw socket that, after the handshake, keeps sending QoS 0 messages
/// while it reads what the client sends, and acknowledges each QoS 1 PUBLISH with PUBACK.
struct FloodingBroker {
    /// Packets from the client after CONNECT, in order.
    packets: mpsc::UnboundedReceiver<Packet>,
    /// Stops the flood.
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl FloodingBroker {
    /// Accepts one client on `listener` and starts flooding it after CONNACK.
    async fn start(listener: TcpListener) -> Self {
        let (stream, _) = tokio::time::timeout(STEP, listener.accept())
            .await
            .expect("client connects in time")
            .unwrap();
        let (mut read_half, mut write_half) = stream.into_split();
        let (packets_tx, packets) = mpsc::unbounded_channel();
        let (acks_tx, mut acks_rx) = mpsc::unbounded_channel::<PacketId>();
        let stop = Arc::new(AtomicBool::new(false));

        let reader = tokio::spawn(async move {
            let mut decoder = Decoder::for_server();
            let mut buf = BytesMut::new();
            loop {
                while let Some(packet) = decoder.decode(&mut buf).expect("valid packet") {
                    if let Packet::Publish(publish) = &packet {
                        if let Delivery::AtLeastOnce(packet_id) = publish.delivery {
                            let _ = acks_tx.send(packet_id);
                        }
                    }
                    if !matches!(packet, Packet::Connect(_)) {
                        let _ = packets_tx.send(packet);
                    }
                }
                match read_half.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        });

        let flooding = Arc::clone(&stop);
        let writer = tokio::spawn(async move {
            let connack = Packet::ConnAck(ConnAck {
                session_present: false,
                reason: ConnectReason::Success,
                properties: Properties::default().into(),
            });
            if write_half.write_all(&encoded(&connack)).await.is_err() {
                return;
            }
            let mut chunk = BytesMut::new();
            for index in 0..64 {
                let packet = inbound(Delivery::AtMostOnce, "flood", numbered(index));
                chunk.extend_from_slice(&encoded(&packet));
            }
            while !flooding.load(Ordering::Relaxed) {
                let mut out = BytesMut::new();
                while let Ok(packet_id) = acks_rx.try_recv() {
                    let ack = Packet::PubAck(PubAck {
                        packet_id,
                        reason: PubAckReason::Success,
                        properties: Properties::default().into(),
                    });
                    out.extend_from_slice(&encoded(&ack));
                }
                out.extend_from_slice(&chunk);
                if write_half.write_all(&out).await.is_err() {
                    return;
                }
            }
        });

        Self {
            packets,
            stop,
            tasks: vec![reader, writer],
        }
    }

    async fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
    }
}

/// A recipient that only counts, so the flood reaches a real mailbox.
struct Counter(usize);

impl Actor for Counter {
    type Context = Context<Self>;
}

impl Handler<Message> for Counter {
    type Result = ();

    fn handle(&mut self, _: Message, _: &mut Context<Self>) {
        self.0 += 1;
    }
}

/// Checks that QoS 1 publishes leave and complete while the broker keeps the stream
/// readable with a flood of QoS 0 messages.
#[actix_rt::test]
async fn publish_completes_during_inbound_flood() {
    const PUBLISHES: usize = 20;

    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let client = ClientOptions::new("127.0.0.1", port)
        .client_id("flooded")
        .keep_alive(Duration::ZERO)
        .start()
        .unwrap();
    client.set_default_recipient(Counter(0).start().recipient());
    let mut broker = FloodingBroker::start(listener).await;

    for index in 0..PUBLISHES {
        let publish = Publish::new("out".parse().unwrap(), numbered(index)).qos(QoS::AtLeastOnce);
        let outcome = tokio::time::timeout(STEP, client.publish(publish)).await;
        assert!(
            matches!(outcome, Ok(Ok(_))),
            "publish {index} did not complete during the flood: {outcome:?}"
        );
    }

    // QoS 0 publishes queued before the disconnect leave before DISCONNECT.
    for index in 0..PUBLISHES {
        let publish = Publish::new("last".parse().unwrap(), numbered(index));
        drop(client.try_publish(publish).unwrap());
    }
    tokio::time::timeout(STEP, client.disconnect(mqttlink::Disconnect::new()))
        .await
        .expect("disconnect completes during the flood")
        .unwrap();
    let mut last = Vec::new();
    loop {
        let packet = tokio::time::timeout(STEP, broker.packets.recv())
            .await
            .expect("packets arrive in time")
            .expect("DISCONNECT arrives before the connection closes");
        match packet {
            Packet::Publish(publish) if publish.topic.as_ref().unwrap().as_str() == "last" => {
                last.push(publish.payload);
            }
            Packet::Disconnect(_) => break,
            _ => {}
        }
    }
    let expected: Vec<Bytes> = (0..PUBLISHES).map(numbered).collect();
    assert_eq!(last, expected, "publishes queued before DISCONNECT");
    broker.finish().await;
    assert_actors_back_to(baseline).await;
}

/// Checks that messages waiting behind a full mailbox are all delivered when the
/// recipient, running in another arbiter, takes a message before the session has
/// polled the send that put it there. Keep-alive is off and the broker waits for the
/// acknowledgements, so only the sends themselves can wake the session.
#[actix_rt::test]
async fn room_made_mid_read_delivers_backlog() {
    const ROUNDS: usize = 50;
    const QOS1: u16 = 3;
    const PADDING: usize = 150;

    let _serial = SERIAL.lock().await;
    let baseline = live_actor_count();
    let broker = FakeBroker::bind().await;
    let client = ClientOptions::from_url(&broker.url())
        .unwrap()
        .client_id("long-read")
        .keep_alive(Duration::ZERO)
        .start()
        .unwrap();
    let (slow, mut seen_rx) = SlowRecipient::start(Duration::ZERO);
    client.set_default_recipient(slow.recipient.clone());
    let mut connection = broker.accept().await;
    connection.handshake().await;

    let mut sent = 0;
    for round in 0..ROUNDS {
        // QoS 1 messages first, so the mailbox fills early in the read, then QoS 0
        // messages that lengthen the read and wait behind the blocked delivery.
        let mut burst = BytesMut::new();
        for packet_id in 1..=QOS1 {
            let packet = inbound(Delivery::AtLeastOnce(id(packet_id)), "t", numbered(sent));
            burst.extend_from_slice(&connection.encode(&packet));
            sent += 1;
        }
        for _ in 0..PADDING {
            let packet = inbound(Delivery::AtMostOnce, "t", numbered(sent));
            burst.extend_from_slice(&connection.encode(&packet));
            sent += 1;
        }
        connection.send_raw(&burst).await;

        for _ in 0..QOS1 {
            let packet = connection.recv().await;
            assert!(
                matches!(packet, Packet::PubAck(_)),
                "round {round}: expected PUBACK, got {packet:?}"
            );
        }
        let first = sent - usize::from(QOS1) - PADDING;
        for index in first..sent {
            let payload = tokio::time::timeout(STEP, seen_rx.recv()).await;
            assert!(
                matches!(&payload, Ok(Some(p)) if *p == numbered(index)),
                "round {round}: message {index} not delivered, got {payload:?}"
            );
        }
    }

    assert_eq!(client.stats().await.unwrap().dropped_messages, 0);
    slow.finish(&client, baseline).await;
}
