//! Fuzzes the client decoder of MQTT 5.0 with arbitrary server bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqttlink::codec::ProtocolVersion;
use mqttlink_fuzz::{run, Target};

fuzz_target!(|data: &[u8]| run(Target::Client(ProtocolVersion::V5), data));
