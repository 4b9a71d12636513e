//! mqttlink: an MQTT 3.1.1 and 5.0 client for actix services.
//!
//! A service starts a [`Client`] from [`ClientOptions`], sends it [`Publish`],
//! [`Subscribe`], [`Unsubscribe`] and [`Disconnect`] requests, and receives matching
//! [`Message`]s in its own actors.
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
//! - No automatic reconnect: when the connection ends, pending requests fail, an
//!   [`Event::Disconnected`] is sent and the client stops.
//! - No enhanced authentication (AUTH), and no outbound topic aliases chosen by the client.
//! - Session state is kept in memory only.

pub mod actors;
mod client;
pub mod codec;
mod error;
pub mod session;
pub mod store;
pub mod transport;

pub use actors::{
    live_actor_count, ClientActor, Disconnect, Event, GetStats, Message, Publish,
    SetDefaultRecipient, Stats, Subscribe, SubscribeEvents, Unsubscribe,
};
pub use client::{Client, ClientOptions};
pub use error::{ClientError, ClosedBy, DisconnectCause};
pub use session::{PublishOutcome, RejectReason, SubscribeOutcome, UnsubscribeOutcome};
