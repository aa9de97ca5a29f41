//! Node ids and the XOR metric of BEP 5: distance, shared prefix, and a
//! random id inside a given bucket. Pure arithmetic; no table, no I/O.

use crate::types::{random_bytes, EntropyError, InfoHash, Rng};
use std::fmt;

/// A DHT node's 160-bit id (an info hash lives in the same space).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct NodeId(pub [u8; 20]);

impl NodeId {
    /// A random id from the operating system's entropy: BEP 5 asks for a
    /// uniformly random id (BEP 42's address-bound ids are not enforced by
    /// the nodes we meet, and a loopback DHT could not satisfy them).
    pub(crate) fn random() -> Result<NodeId, EntropyError> {
        let mut id = [0u8; 20];
        random_bytes(&mut id)?;
        Ok(NodeId(id))
    }

    /// `self XOR other`, compared as a big-endian number.
    pub(crate) fn distance(&self, other: &NodeId) -> [u8; 20] {
        let mut d = [0u8; 20];
        for (i, b) in d.iter_mut().enumerate() {
            *b = self.0[i] ^ other.0[i];
        }
        d
    }

    /// How many leading bits the two ids share (160 when equal).
    pub(crate) fn common_prefix(&self, other: &NodeId) -> usize {
        for i in 0..20 {
            let x = self.0[i] ^ other.0[i];
            if x != 0 {
                return i * 8 + x.leading_zeros() as usize;
            }
        }
        160
    }

    /// A random id that shares exactly `bits` leading bits with `self`
    /// (`bits` < 160): a target that falls in bucket `bits`.
    pub(crate) fn random_in_bucket(&self, bits: usize, rng: &mut Rng) -> NodeId {
        let bits = bits.min(159);
        let mut id = [0u8; 20];
        for chunk in id.chunks_mut(8) {
            let r = rng.next_u64().to_be_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
        for i in 0..bits {
            set_bit(&mut id, i, bit(&self.0, i));
        }
        set_bit(&mut id, bits, !bit(&self.0, bits));
        NodeId(id)
    }
}

fn bit(b: &[u8; 20], i: usize) -> bool {
    b[i / 8] & (0x80 >> (i % 8)) != 0
}

fn set_bit(b: &mut [u8; 20], i: usize, v: bool) {
    if v {
        b[i / 8] |= 0x80 >> (i % 8);
    } else {
        b[i / 8] &= !(0x80 >> (i % 8));
    }
}

impl From<InfoHash> for NodeId {
    fn from(h: InfoHash) -> NodeId {
        NodeId(h.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", crate::types::hex(&self.0[..6]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_and_distance() {
        let a = NodeId([0u8; 20]);
        let mut b = [0u8; 20];
        b[2] = 0b0001_0000;
        let b = NodeId(b);
        assert_eq!(a.common_prefix(&b), 19);
        assert_eq!(a.common_prefix(&a), 160);
        assert_eq!(a.distance(&b)[2], 0b0001_0000);
        assert!(a.distance(&b) < a.distance(&NodeId([0xff; 20])));
    }

    #[test]
    fn random_in_bucket_lands_in_that_bucket() {
        let mut rng = Rng::new(7);
        let own = NodeId([0x5a; 20]);
        for bits in [0, 1, 7, 8, 63, 100, 159] {
            let id = own.random_in_bucket(bits, &mut rng);
            assert_eq!(own.common_prefix(&id), bits, "bucket {bits}");
        }
    }
}
