//! mqttlink: an MQTT 3.1.1 and 5.0 client for actix services.
//!
//! A service starts a [`Client`] from [`ClientOptions`], sends it [`Publish`],
//! [`Subscribe`], [`Unsubscribe`] and [`Disconnect`] requests, and receives matching
//! [`Message`]s in its own actors.
//!
//! ```no_run
//! use actix::prelude::*;
//! use mqttlink::codec::{QoS, SubscriptionOptions};
//! use mqttlink::{ClientOptions, Disconnect, Publish, Subscribe};
//!
//! struct Printer;
//!
//! impl Actor for Printer {
//!     type Context = Context<Self>;
//! }
//!
//! impl Handler<mqttlink::Message> for Printer {
//!     type Result = ();
//!
//!     fn handle(&mut self, message: mqttlink::Message, _: &mut Context<Self>) {
//!         println!("{}: {} bytes", message.topic, message.payload.len());
//!     }
//! }
//!
//! #[actix_rt::main]
//! async fn main() -> Result<(), mqttlink::ClientError> {
//!     let client = ClientOptions::from_url("mqtt://127.0.0.1:1883")?
//!         .client_id("quickstart")
//!         .start()?;
//!
//!     let filter = "greetings/#".parse().expect("valid topic filter");
//!     let options = SubscriptionOptions::with_qos(QoS::AtLeastOnce);
//!     client
//!         .subscribe(Subscribe::new(Printer.start().recipient()).filter(filter, options))
//!         .await?;
//!
//!     let topic = "greetings/world".parse().expect("valid topic name");
//!     client
//!         .publish(Publish::new(topic, "hello").qos(QoS::AtLeastOnce))
//!         .await?;
//!     client.disconnect(Disconnect::new()).await
//! }
//! ```
//!
//! The crate is layered, and each layer depends only on the ones below it:
//!
//! - [`Client`] and [`ClientOptions`]: the public API.
//! - [`actors`]: the client supervisor and one linked group of actors per connection.
//! - [`session`]: the sans-IO session state machine (handshake, QoS flows, keep-alive).
//! - [`store`]: session state that outlives a connection.
//! - [`transport`]: the byte stream to the broker.
//! - [`codec`]: sans-IO packets of MQTT 3.1, 3.1.1 and 5.0 on `bytes`.
//!
//! # Limitations
//!
//! - Only plain TCP (`mqtt://`); TLS and WebSocket are not implemented yet.
//! - Automatic reconnect is off by default. Then, when the connection ends, pending
//!   requests fail, an [`Event::Disconnected`] is sent and the client stops. With
//!   [`ClientOptions::reconnect`] the client connects again after a backoff delay and
//!   keeps its pending requests, but a QoS 0 publish handed to the socket when the
//!   connection ended fails, because the client cannot tell whether it reached the broker.
//! - Session state lives in this process only, so a resumed session survives a broker
//!   restart (with broker persistence) but not a restart of the application.
//! - A v5 Server Reference in CONNACK or DISCONNECT is followed for one attempt, and
//!   only its first entry, in the form `host`, `host:port` or `[ipv6]:port`.
//! - Session Taken Over stops the client only when the broker sends DISCONNECT 0x8E;
//!   Mosquitto 2.0.11 closes the older connection without one, so two clients with the
//!   same identifier and reconnect on still take the session from each other there.
//! - No enhanced authentication (AUTH), and no outbound topic aliases chosen by the client.
//! - A QoS 2 message the broker sends again after its PUBREL, which MQTT forbids, is
//!   delivered a second time: the client forgets the packet identifier once the flow is
//!   complete. Mosquitto 2.0.11 sends such copies after a restart from its persistence.
//! - Session state is kept in memory only.

pub mod actors;
mod client;
pub mod codec;
mod error;
mod id_hash;
pub mod reconnect;
pub mod session;
pub mod store;
pub mod transport;

pub use actors::{
    live_actor_count, ClientActor, Disconnect, DropReason, Event, GetStats, Message, Publish,
    SetDefaultRecipient, Stats, Subscribe, SubscribeEvents, Unsubscribe,
};
pub use client::{Client, ClientOptions, QueueFullPolicy};
pub use error::{ClientError, ClosedBy, DisconnectCause};
pub use session::{PublishOutcome, RejectReason, SubscribeOutcome, UnsubscribeOutcome};
