//! The check that every fuzz target runs: it feeds bytes to a decoder in pieces and
//! verifies what comes out.
//!
//! The first input byte sets the piece size (1 to 16 bytes), so the fuzzer also
//! explores how packets are split across reads. The decoder must not panic, every
//! error must carry a failure reason code, and every decoded packet must encode and
//! decode back to itself.
#![allow(clippy::panic)]

use bytes::BytesMut;
use mqttlink::codec::{encode, Decoder, Packet, ProtocolVersion, DEFAULT_MAX_PACKET_SIZE};

/// The decoder a target exercises.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// `Decoder::for_client` of this version.
    Client(ProtocolVersion),
    /// `Decoder::for_server`, which learns the version from CONNECT.
    Server,
}

impl Target {
    fn decoder(self) -> Decoder {
        match self {
            Self::Client(version) => Decoder::for_client(version),
            Self::Server => Decoder::for_server(),
        }
    }
}

/// Feeds `data` to a new decoder of `target` and checks every packet and error.
pub fn run(target: Target, data: &[u8]) {
    let Some((&piece_seed, input)) = data.split_first() else {
        return;
    };
    let piece_size = usize::from(piece_seed % 16) + 1;
    let mut decoder = target.decoder();
    let mut buf = BytesMut::new();
    let mut version = match target {
        Target::Client(version) => Some(version),
        Target::Server => None,
    };

    for piece in input.chunks(piece_size) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(packet)) => {
                    if let Packet::Connect(connect) = &packet {
                        version = Some(connect.protocol);
                    }
                    let Some(version) = version else {
                        panic!("server decoder returned {packet:?} before CONNECT");
                    };
                    check_reencodes(target, &packet, version);
                }
                Ok(None) => break,
                Err(error) => {
                    assert!(
                        !error.reason_code().is_success(),
                        "{error:?} has a success reason code"
                    );
                    return;
                }
            }
        }
    }
}

/// Encodes `packet` and decodes the bytes with a new decoder, which must give it back.
fn check_reencodes(target: Target, packet: &Packet, version: ProtocolVersion) {
    let mut buf = BytesMut::new();
    if let Err(error) = encode(packet, version, DEFAULT_MAX_PACKET_SIZE, &mut buf) {
        panic!("decoded {packet:?} but encoding it for {version:?} failed: {error}");
    }
    let mut decoder = match (target, packet) {
        (Target::Client(_), _) | (Target::Server, Packet::Connect(_)) => target.decoder(),
        (Target::Server, _) => {
            // Reaching this packet needs a CONNECT first.
            let mut decoder = Decoder::for_server();
            decoder.set_version(version);
            decoder
        }
    };
    let again = decoder.decode(&mut buf);
    assert!(
        matches!(&again, Ok(Some(decoded)) if decoded == packet),
        "{packet:?} re-encoded as {:02X?} decodes to {again:?}",
        buf.as_ref()
    );
}
