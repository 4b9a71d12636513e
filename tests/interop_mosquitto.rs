//! Interop tests against a real Mosquitto broker started by each test.
//!
//! The tests skip (with a printed line) when mosquitto is not installed, unless
//! `MQTTLINK_REQUIRE_MOSQUITTO` is set; see `support/mosquitto.rs`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "support/mosquitto.rs"]
mod mosquitto;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use mosquitto::Mosquitto;

const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Checks the harness itself with a hand-written MQTT 3.1.1 CONNECT, so a failure
/// here points at the broker setup and not at the client.
#[test]
fn harness_broker_accepts_connect() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let mut stream = TcpStream::connect(broker.addr()).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();

    // CONNECT: protocol "MQTT" level 4, clean session, keep-alive 10 s, client id "h".
    let connect = [
        0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 10, 0, 1, b'h',
    ];
    stream.write_all(&connect).unwrap();

    let mut connack = [0_u8; 4];
    stream.read_exact(&mut connack).unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK accepted, no session");
}
