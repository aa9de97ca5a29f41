//! Newtypes for the domain values every module shares: info hashes, peer ids,
//! piece indices and blocks. Owns their formatting and construction; does not
//! own any arithmetic over pieces and files (that is `geometry`).

use std::fmt;

/// SHA-1 of the bencoded `info` dictionary, exactly as it arrived.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InfoHash(pub [u8; 20]);

impl InfoHash {
    /// Lowercase hex, the form trackers' whitelists and users use.
    pub fn hex(&self) -> String {
        hex(&self.0)
    }
}

impl fmt::Display for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InfoHash({})", self.hex())
    }
}

/// The 20-byte id a client announces and sends in its handshake.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerId(pub [u8; 20]);

impl PeerId {
    /// Azureus-style id `-RT0100-` followed by 12 random bytes. Randomness comes
    /// from std's per-process SipHash keys mixed with the clock and pid, which
    /// is enough to keep two rtc processes on one host apart; it is not a secret.
    pub fn generate() -> PeerId {
        let mut id = [0u8; 20];
        id[..8].copy_from_slice(b"-RT0100-");
        for chunk in id[8..].chunks_mut(8) {
            let v = random_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        PeerId(id)
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({})", String::from_utf8_lossy(&self.0))
    }
}

/// Index of a piece within a torrent.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct PieceIndex(pub u32);

impl PieceIndex {
    pub fn as_usize(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for PieceIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A byte range inside one piece: the unit of `request`, `piece` and `cancel`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Block {
    pub piece: PieceIndex,
    pub offset: u32,
    pub length: u32,
}

/// A random number from std's per-process SipHash keys (fresh keys per
/// call) mixed with the clock and pid: enough for peer ids, transaction ids
/// and shuffling tracker tiers; not for secrets.
pub fn random_u64() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    h.finish()
}

/// Fills `buf` from the kernel's random source (`/dev/urandom`), or, if
/// that cannot be read, from [`random_u64`]. Used for MSE private keys and
/// padding, which are obfuscation, not authentication.
pub fn random_bytes(buf: &mut [u8]) {
    use std::io::Read;
    let from_kernel = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(buf));
    if from_kernel.is_err() {
        for chunk in buf.chunks_mut(8) {
            let r = random_u64().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }
}

/// A small, fast generator (xorshift64*) for choices that need spread, not
/// secrecy: tie-breaks in the picker and choker, which run many times a
/// second. Seeded from [`random_u64`]; tests seed it to be deterministic.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // xorshift has one bad state: zero.
        Rng(seed | 1)
    }

    pub fn seeded() -> Rng {
        Rng::new(random_u64())
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-enough index below `n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }
}

/// Lowercase hex of arbitrary bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_formats_lowercase() {
        assert_eq!(hex(&[0x00, 0xab, 0x1f]), "00ab1f");
        assert_eq!(InfoHash([0xff; 20]).to_string(), "f".repeat(40));
    }

    #[test]
    fn peer_ids_carry_prefix_and_differ() {
        let a = PeerId::generate();
        let b = PeerId::generate();
        assert_eq!(&a.0[..8], b"-RT0100-");
        assert_ne!(a, b);
    }
}
