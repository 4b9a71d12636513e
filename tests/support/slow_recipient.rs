//! A recipient whose mailbox takes one message, run in an arbiter of its own, so the
//! session keeps finding its mailbox full and gets room from another thread.

use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use mqttlink::{Client, Disconnect, Message};
use tokio::sync::mpsc;

use crate::actor_broker::{assert_actors_back_to, STEP};

/// An actor that sleeps for `pause` in its handler, then passes the payload on.
struct Sleepy {
    pause: Duration,
    seen: mpsc::UnboundedSender<Bytes>,
}

impl Actor for Sleepy {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(1);
    }
}

impl Handler<Message> for Sleepy {
    type Result = ();

    fn handle(&mut self, message: Message, _: &mut Context<Self>) {
        if !self.pause.is_zero() {
            std::thread::sleep(self.pause);
        }
        let _ = self.seen.send(message.payload);
    }
}

/// The slow recipient and the arbiter it runs in.
pub struct SlowRecipient {
    arbiter: Arbiter,
    /// The address the client sends the messages to.
    pub recipient: Recipient<Message>,
}

impl SlowRecipient {
    /// Starts the recipient in a new arbiter. It sleeps for `pause` per message, then
    /// sends the payload to the returned receiver.
    pub fn start(pause: Duration) -> (Self, mpsc::UnboundedReceiver<Bytes>) {
        let arbiter = Arbiter::new();
        let (seen, seen_rx) = mpsc::unbounded_channel();
        let sleepy = Sleepy::start_in_arbiter(&arbiter.handle(), move |_| Sleepy { pause, seen });
        let slow = Self {
            arbiter,
            recipient: sleepy.recipient(),
        };
        (slow, seen_rx)
    }

    /// Disconnects `client`, stops the arbiter and waits for its thread, then checks
    /// that the live actors are back to `baseline`.
    pub async fn finish(self, client: &Client, baseline: usize) {
        tokio::time::timeout(STEP, client.disconnect(Disconnect::new()))
            .await
            .expect("disconnect returns in time")
            .unwrap();
        let arbiter = self.arbiter;
        arbiter.stop();
        tokio::task::spawn_blocking(move || arbiter.join())
            .await
            .unwrap()
            .unwrap();
        assert_actors_back_to(baseline).await;
    }
}
