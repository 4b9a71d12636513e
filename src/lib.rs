//! mqttlink: an MQTT 3.1.1 and 5.0 client for actix services.
//!
//! The crate is layered, and each layer depends only on the ones below it:
//!
//! - [`codec`]: sans-IO packets of MQTT 3.1, 3.1.1 and 5.0 on `bytes`.

pub mod codec;
