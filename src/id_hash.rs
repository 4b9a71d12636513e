//! A hash map keyed by an integer identifier, with a hash of one multiplication.
//!
//! The standard map's SipHash costs more than the rest of an inbound QoS 1 message's
//! bookkeeping. Its protection against keys chosen to collide is not needed for the
//! keys used here: packet identifiers, at most 65,535 distinct 16-bit values, and the
//! request tokens the supervisor counts up from zero. The multiplication spreads them
//! over the high and low bits that the map's probing uses.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Map from an identifier that hashes as one `u16` or `u64`, such as
/// [`PacketId`](crate::codec::PacketId) or [`RequestToken`](crate::store::RequestToken).
pub(crate) type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// Hasher for one identifier.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

/// An odd constant near 2^64 divided by the golden ratio (Fibonacci hashing).
const MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;

impl IdHasher {
    /// Sets the hash to that of one integer.
    fn mix(&mut self, value: u64) {
        let product = value.wrapping_mul(MULTIPLIER);
        // The low bits of the product depend only on the low bits of the value, so the
        // high half is folded in for the bucket index.
        self.0 = product ^ (product >> 32);
    }
}

impl Hasher for IdHasher {
    fn write_u16(&mut self, value: u16) {
        self.mix(u64::from(value));
    }

    fn write_u64(&mut self, value: u64) {
        self.mix(value);
    }

    /// Hashes other input byte by byte. A `PacketId` writes one `u16` and a
    /// `RequestToken` one `u64`, so neither comes here.
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(MULTIPLIER);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashSet;
    use std::hash::BuildHasher;

    use super::*;
    use crate::codec::PacketId;
    use crate::store::RequestToken;

    fn hash(id: u16) -> u64 {
        BuildHasherDefault::<IdHasher>::default().hash_one(PacketId::try_from(id).unwrap())
    }

    fn hash_token(token: u64) -> u64 {
        BuildHasherDefault::<IdHasher>::default().hash_one(RequestToken(token))
    }

    #[test]
    fn identifiers_hash_apart() {
        let hashes: HashSet<u64> = (1..=u16::MAX).map(hash).collect();
        assert_eq!(hashes.len(), usize::from(u16::MAX));
    }

    #[test]
    fn keys_sharing_low_bits_spread_over_buckets() {
        // Multiples of 1,024 share their low ten bits, which a multiplication alone
        // keeps in the low bits of the hash. Tokens count up, so those queued 1,024
        // apart are such multiples too.
        let ids: HashSet<u64> = (1..64).map(|k| hash(k * 1024) & 1023).collect();
        assert!(ids.len() > 32, "{} buckets for packet ids", ids.len());
        let tokens: HashSet<u64> = (1..64).map(|k| hash_token(k * 1024) & 1023).collect();
        assert!(tokens.len() > 32, "{} buckets for tokens", tokens.len());
    }

    #[test]
    fn map_stores_and_removes() {
        let mut map = IdMap::default();
        for id in 1..=1000 {
            map.insert(PacketId::try_from(id).unwrap(), id);
        }
        assert_eq!(map.get(&PacketId::try_from(500).unwrap()), Some(&500));
        assert_eq!(map.remove(&PacketId::try_from(1).unwrap()), Some(1));
        assert_eq!(map.len(), 999);
    }

    #[test]
    fn token_hashes_as_its_integer() {
        // A token hashes as its one u64, so it gets the multiplication, not the
        // byte-by-byte fallback.
        let mut hasher = IdHasher::default();
        hasher.write_u64(77);
        assert_eq!(hash_token(77), hasher.finish());
    }
}
