//! Fuzzes the server decoder, which learns the version from CONNECT, with arbitrary
//! client bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqttlink_fuzz::{run, Target};

fuzz_target!(|data: &[u8]| run(Target::Server, data));
