//! Deterministic fuzzing of both decoders inside `cargo test`.
//!
//! Each test feeds a fixed number of buffers through one decoder: random bytes, and
//! valid encoded packets after bit flips, truncations, edits of the remaining length,
//! insertions, deletions and splices. Every buffer is decoded twice, whole and in
//! random chunks. The checks: no panic, both feedings give the same packets and the
//! same error, every error carries a failure reason code, and every decoded packet
//! encodes and decodes back to itself. A fixed seed per test makes failures
//! reproducible; the buffer is printed on failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod codec_support;

use std::time::Instant;

use bytes::BytesMut;
use mqttlink::codec::{
    encode, DecodeError, Decoder, Packet, ProtocolVersion, DEFAULT_MAX_PACKET_SIZE,
};

use codec_support::{
    decoder, encode_to_vec, minimal_connect, sample_connect, sample_packets, Receiver,
};

/// Buffers per test; four tests give 600,000 in all.
const EXECUTIONS: usize = 150_000;

/// SplitMix64: small, fast and good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Returns a number in `0..bound`. `bound` must not be 0.
    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

/// The decoder under test: a client of one version, or a server that learns the
/// version from CONNECT.
#[derive(Debug, Clone, Copy)]
enum Target {
    Client(ProtocolVersion),
    Server,
}

impl Target {
    fn decoder(self, max_packet_size: u32) -> Decoder {
        let decoder = match self {
            Self::Client(version) => Decoder::for_client(version),
            Self::Server => Decoder::for_server(),
        };
        decoder.with_max_packet_size(max_packet_size)
    }

    /// Returns valid byte streams for this decoder: each encoded packet alone and, for
    /// a server, each after a CONNECT.
    fn seeds(self) -> Vec<Vec<u8>> {
        match self {
            Self::Client(version) => sample_packets(version, Receiver::Client)
                .iter()
                .map(|packet| encode_to_vec(packet, version))
                .collect(),
            Self::Server => {
                let mut seeds = Vec::new();
                for version in codec_support::VERSIONS {
                    seeds.push(encode_to_vec(&sample_connect(version), version));
                    for packet in sample_packets(version, Receiver::Server) {
                        let mut stream = minimal_connect(version).to_vec();
                        stream.extend(encode_to_vec(&packet, version));
                        seeds.push(stream);
                    }
                }
                seeds
            }
        }
    }
}

/// What one feeding of a buffer produced: each packet with the version the decoder
/// used for it, and the error that ended the feeding, if any.
#[derive(Debug, PartialEq)]
struct Outcome {
    packets: Vec<(Packet, ProtocolVersion)>,
    error: Option<DecodeError>,
}

/// Feeds `input` to a fresh decoder in pieces of the given sizes (the rest in one
/// piece), decoding after each piece until the decoder needs more bytes or fails.
fn feed(target: Target, max_packet_size: u32, input: &[u8], piece_sizes: &[usize]) -> Outcome {
    let mut decoder = target.decoder(max_packet_size);
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    let mut rest = input;
    let mut pieces = piece_sizes.iter();
    while !rest.is_empty() {
        let size = pieces
            .next()
            .map_or(rest.len(), |&size| size.min(rest.len()));
        let (piece, tail) = rest.split_at(size);
        buf.extend_from_slice(piece);
        rest = tail;
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(packet)) => {
                    let Some(version) = decoder.version() else {
                        panic!("decoder has no version after decoding {packet:?}");
                    };
                    packets.push((packet, version));
                }
                Ok(None) => break,
                Err(error) => {
                    return Outcome {
                        packets,
                        error: Some(error),
                    }
                }
            }
        }
    }
    Outcome {
        packets,
        error: None,
    }
}

/// Encodes each decoded packet and decodes it again, which must give the same packet.
fn check_reencodes(target: Target, packets: &[(Packet, ProtocolVersion)], input: &[u8]) {
    for (packet, version) in packets {
        let version = *version;
        let mut buf = BytesMut::new();
        if let Err(error) = encode(packet, version, DEFAULT_MAX_PACKET_SIZE, &mut buf) {
            panic!("decoded {packet:?} from {input:02X?} but encoding it failed: {error}");
        }
        let mut decoder = match (target, packet) {
            (Target::Server, Packet::Connect(_)) => Decoder::for_server(),
            (Target::Server, _) => decoder(Receiver::Server, version),
            (Target::Client(_), _) => decoder(Receiver::Client, version),
        };
        let again = decoder.decode(&mut buf);
        assert!(
            matches!(&again, Ok(Some(round_tripped)) if round_tripped == packet),
            "decoded {packet:?} from {input:02X?}, re-encoded as {:02X?}, which decodes to {again:?}",
            buf.as_ref()
        );
    }
}

/// Applies one random change to `input`. `seeds` provides material for splices.
fn mutate(rng: &mut Rng, input: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    const INTERESTING: [u8; 8] = [0x00, 0x01, 0x7F, 0x80, 0xFF, 0x02, 0x26, 0xC0];
    let len = input.len();
    match rng.below(8) {
        0 if len > 0 => input[rng.below(len)] ^= 1 << rng.below(8),
        1 if len > 0 => input[rng.below(len)] = INTERESTING[rng.below(INTERESTING.len())],
        2 if len > 0 => input.truncate(rng.below(len)),
        3 if len > 1 => {
            // Edit the remaining length, or a string length prefix further on.
            let index = if rng.chance(60) { 1 } else { rng.below(len) };
            input[index] = match rng.below(3) {
                0 => input[index].wrapping_add(1),
                1 => input[index].wrapping_sub(1),
                _ => rng.byte(),
            };
        }
        4 => {
            let at = rng.below(len + 1);
            let count = 1 + rng.below(4);
            for _ in 0..count {
                input.insert(at, rng.byte());
            }
        }
        5 if len > 0 => {
            let start = rng.below(len);
            let end = (start + 1 + rng.below(4)).min(len);
            input.drain(start..end);
        }
        6 => {
            // Splice: keep a prefix and append the tail of another seed.
            let other = &seeds[rng.below(seeds.len())];
            input.truncate(rng.below(len + 1));
            input.extend_from_slice(&other[rng.below(other.len() + 1)..]);
        }
        _ => {
            let other = &seeds[rng.below(seeds.len())];
            input.extend_from_slice(other);
        }
    }
}

/// Returns the next input: random bytes, or a seed changed one to four times.
fn next_input(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    if rng.chance(15) {
        let len = rng.below(48);
        return (0..len).map(|_| rng.byte()).collect();
    }
    let mut input = seeds[rng.below(seeds.len())].clone();
    for _ in 0..=rng.below(4) {
        mutate(rng, &mut input, seeds);
    }
    input
}

/// Returns random piece sizes that cover `len` bytes, many of them one byte.
fn random_pieces(rng: &mut Rng, len: usize) -> Vec<usize> {
    let mut pieces = Vec::new();
    let mut covered = 0;
    while covered < len {
        let size = if rng.chance(50) {
            1
        } else {
            1 + rng.below(len - covered)
        };
        pieces.push(size);
        covered += size;
    }
    pieces
}

fn fuzz(target: Target, seed: u64) {
    let started = Instant::now();
    let mut rng = Rng(seed);
    let seeds = target.seeds();
    let (mut packets, mut errors) = (0_usize, 0_usize);

    for _ in 0..EXECUTIONS {
        let input = next_input(&mut rng, &seeds);
        let max_packet_size = if rng.chance(5) {
            2 + rng.below(40) as u32
        } else {
            DEFAULT_MAX_PACKET_SIZE
        };

        let whole = feed(target, max_packet_size, &input, &[]);
        let pieces = random_pieces(&mut rng, input.len());
        let chunked = feed(target, max_packet_size, &input, &pieces);
        assert_eq!(
            whole, chunked,
            "whole and chunked feeding differ for {input:02X?} in pieces {pieces:?}"
        );

        if let Some(error) = &whole.error {
            assert!(
                !error.reason_code().is_success(),
                "error {error:?} for {input:02X?} has success reason code {:?}",
                error.reason_code()
            );
            errors += 1;
        }
        check_reencodes(target, &whole.packets, &input);
        packets += whole.packets.len();
    }

    println!(
        "{target:?}: {EXECUTIONS} buffers, {packets} packets, {errors} errors, {:.1?}",
        started.elapsed()
    );
}

#[test]
fn fuzz_client_decoder_3_1() {
    fuzz(Target::Client(ProtocolVersion::V3_1), 0x3101);
}

#[test]
fn fuzz_client_decoder_3_1_1() {
    fuzz(Target::Client(ProtocolVersion::V3_1_1), 0x3111);
}

#[test]
fn fuzz_client_decoder_5() {
    fuzz(Target::Client(ProtocolVersion::V5), 0x5000);
}

#[test]
fn fuzz_server_decoder() {
    fuzz(Target::Server, 0x5E4E);
}
