//! mqttlink: an MQTT 3.1.1 and 5.0 client for actix services.
//!
//! The crate is layered, and each layer depends only on the ones below it:
//!
//! - [`session`]: the sans-IO session state machine (handshake, QoS flows, keep-alive).
//! - [`store`]: session state that outlives a connection.
//! - [`codec`]: sans-IO packets of MQTT 3.1, 3.1.1 and 5.0 on `bytes`.

pub mod codec;
pub mod session;
pub mod store;
