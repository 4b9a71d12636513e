//! A hash map keyed by packet identifier, with a hash of one multiplication.
//!
//! The standard map's SipHash costs more than the rest of an inbound QoS 1 message's
//! bookkeeping. Its protection against keys chosen to collide is not needed here: the
//! keys are at most 65,535 distinct 16-bit identifiers, and the multiplication spreads
//! them over the high and low bits that the map's probing uses.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::codec::PacketId;

/// Map from packet identifier to `V`.
pub(super) type PacketIdMap<V> = HashMap<PacketId, V, BuildHasherDefault<PacketIdHasher>>;

/// Hasher for one packet identifier.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct PacketIdHasher(u64);

/// An odd constant near 2^64 divided by the golden ratio (Fibonacci hashing).
const MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for PacketIdHasher {
    fn write_u16(&mut self, value: u16) {
        let product = u64::from(value).wrapping_mul(MULTIPLIER);
        // The low bits of the product depend only on the low bits of the value, so the
        // high half is folded in for the bucket index.
        self.0 = product ^ (product >> 32);
    }

    /// Hashes other input byte by byte; a `PacketId` only ever writes one `u16`.
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

    fn hash(id: u16) -> u64 {
        BuildHasherDefault::<PacketIdHasher>::default().hash_one(PacketId::try_from(id).unwrap())
    }

    #[test]
    fn identifiers_hash_apart() {
        let hashes: HashSet<u64> = (1..=u16::MAX).map(hash).collect();
        assert_eq!(hashes.len(), usize::from(u16::MAX));
    }

    #[test]
    fn identifiers_sharing_low_bits_spread_over_buckets() {
        // Multiples of 1,024 share their low ten bits, which a multiplication alone
        // keeps in the low bits of the hash.
        let buckets: HashSet<u64> = (1..64).map(|k| hash(k * 1024) & 1023).collect();
        assert!(buckets.len() > 32, "{} buckets", buckets.len());
    }

    #[test]
    fn map_stores_and_removes() {
        let mut map = PacketIdMap::default();
        for id in 1..=1000 {
            map.insert(PacketId::try_from(id).unwrap(), id);
        }
        assert_eq!(map.get(&PacketId::try_from(500).unwrap()), Some(&500));
        assert_eq!(map.remove(&PacketId::try_from(1).unwrap()), Some(1));
        assert_eq!(map.len(), 999);
    }
}
