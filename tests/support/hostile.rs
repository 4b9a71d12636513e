//! A fake broker for hostile-broker tests: it listens on 127.0.0.1 port 0, decodes what
//! the client sends with the crate's server-side decoder, and writes whatever bytes a
//! test requests, valid MQTT or not. Every wait is bounded by `STEP`.
//!
//! It also takes a snapshot of what a client can leak (live actors, tokio tasks, open
//! file descriptors) and waits, bounded, for the counts to return to it.
//!
//! The broker itself is the actor tests' fake broker, under the names these tests use.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use mqttlink::codec::{
    Delivery, Packet, PacketId, Properties, PubAck, PubAckReason, PubComp, PubCompReason, PubRec,
    PubRel, Publish, TopicName,
};
use mqttlink::{live_actor_count, Client, ClientError, ClientOptions, DisconnectCause, Event};
use tokio::sync::mpsc;

#[path = "actor_broker.rs"]
mod actor_broker;

pub use actor_broker::{
    forward, next, BrokerConnection as Peer, FakeBroker as Hostile, Forward, STEP,
};

/// What a client can leave behind: mqttlink actors, tokio tasks and open sockets of this
/// process. The task count covers tasks spawned on the runtime itself. Actix actors run
/// on the System's `LocalSet`, which tokio's runtime metrics do not count.
///
/// Sockets are compared by inode, not by descriptor count, because tests waiting for the
/// serial lock open runtimes (epoll and eventfd descriptors, and duplicates of sockets
/// the harness inherited) at any moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resources {
    pub actors: usize,
    pub tasks: usize,
    pub sockets: BTreeSet<String>,
}

impl Resources {
    /// Counts the resources in use now.
    pub fn now() -> Self {
        Self {
            actors: live_actor_count(),
            tasks: tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks(),
            sockets: open_sockets(),
        }
    }

    /// Waits, yielding to the actors, until no count is above this snapshot and every
    /// socket opened since is closed. Fails the test with what remains after `STEP`.
    pub async fn assert_back(self) {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let now = Self::now();
            let new_sockets: Vec<&String> = now.sockets.difference(&self.sockets).collect();
            if now.actors <= self.actors && now.tasks <= self.tasks && new_sockets.is_empty() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} actors and {} tasks (expected at most {} and {}), sockets still open: {new_sockets:?}",
                now.actors,
                now.tasks,
                self.actors,
                self.tasks
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Returns the inodes of the sockets this process has open, such as `socket:[123]`.
fn open_sockets() -> BTreeSet<String> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return BTreeSet::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| std::fs::read_link(entry.path()).ok())
        .map(|target| target.display().to_string())
        .filter(|target| target.starts_with("socket:"))
        .collect()
}

/// A forwarding recipient on its own arbiter whose thread is blocked until released, so
/// its mailbox fills up like that of a slow application actor.
pub struct Stalled {
    arbiter: Arbiter,
    release: std::sync::mpsc::Sender<()>,
}

impl Stalled {
    /// Starts the forwarding actor and blocks its thread, at most for `STEP`.
    pub fn start() -> (
        Self,
        Addr<Forward<mqttlink::Message>>,
        mpsc::UnboundedReceiver<mqttlink::Message>,
    ) {
        let arbiter = Arbiter::new();
        let (sender, receiver) = mpsc::unbounded_channel();
        let addr = Forward::start_in_arbiter(&arbiter.handle(), move |_| Forward(sender));
        let (release, wait) = std::sync::mpsc::channel::<()>();
        arbiter.spawn(async move {
            let _ = wait.recv_timeout(STEP);
        });
        (Self { arbiter, release }, addr, receiver)
    }

    /// Unblocks the recipient's thread.
    pub fn release(&self) {
        let _ = self.release.send(());
    }
}

impl Drop for Stalled {
    fn drop(&mut self) {
        let _ = self.release.send(());
        self.arbiter.stop();
    }
}

/// Returns a PUBLISH from the broker to `topic`, without properties.
pub fn inbound(delivery: Delivery, topic: &str, payload: &'static [u8]) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        delivery,
        retain: false,
        topic: Some(topic.parse().expect("valid topic name")),
        properties: Properties::default().into(),
        payload: Bytes::from_static(payload),
    })
}

/// Returns PUBACK with reason Success.
pub fn puback(packet_id: PacketId) -> Packet {
    Packet::PubAck(PubAck {
        packet_id,
        reason: PubAckReason::Success,
        properties: Properties::default().into(),
    })
}

/// Returns PUBREC with reason Success.
pub fn pubrec(packet_id: PacketId) -> Packet {
    Packet::PubRec(PubRec {
        packet_id,
        reason: PubAckReason::Success,
        properties: Properties::default().into(),
    })
}

/// Returns PUBREL with reason Success.
pub fn pubrel(packet_id: PacketId) -> Packet {
    Packet::PubRel(PubRel {
        packet_id,
        reason: PubCompReason::Success,
        properties: Properties::default().into(),
    })
}

/// Returns PUBCOMP with reason Success.
pub fn pubcomp(packet_id: PacketId) -> Packet {
    Packet::PubComp(PubComp {
        packet_id,
        reason: PubCompReason::Success,
        properties: Properties::default().into(),
    })
}

/// Returns the packet identifier `value`, which must not be 0.
pub fn id(value: u16) -> PacketId {
    PacketId::try_from(value).expect("packet identifier above 0")
}

/// Returns the topic name `name`, which must be valid.
pub fn topic(name: &str) -> TopicName {
    name.parse().expect("valid topic name")
}

/// A started client with its event stream.
pub struct Started {
    pub client: Client,
    pub events: mpsc::UnboundedReceiver<Event>,
}

/// Starts a client with `options` and forwards its events.
pub fn start(options: ClientOptions) -> Started {
    let client = options.start().expect("valid options");
    let (listener, events) = forward::<Event>();
    client.subscribe_events(listener.recipient());
    Started { client, events }
}

/// Waits for `Event::Disconnected` and returns the error it reports.
pub async fn failure(events: &mut mpsc::UnboundedReceiver<Event>) -> ClientError {
    loop {
        match next(events).await {
            Event::Disconnected {
                reason: DisconnectCause::Failed(error),
            } => return error,
            Event::Disconnected { reason } => panic!("expected a failure, got {reason:?}"),
            Event::Connected { .. } => {}
            other => panic!("unexpected event {other:?}"),
        }
    }
}

/// Waits for `future`, failing the test after `STEP`.
pub async fn within<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(STEP, future)
        .await
        .expect("finishes in time")
}
