//! Newtypes for the domain values every module shares: info hashes, peer ids,
//! piece indices and blocks. Owns their formatting and construction, and
//! rtc's one source of randomness (the operating system's, through the
//! `getrandom` crate); does not own any arithmetic over pieces and files
//! (that is `geometry`).

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
    /// Azureus-style id `-RT0100-` followed by 12 random bytes from the
    /// operating system. Not a secret, but it must differ between two rtc
    /// processes (trackers and our self-connection check tell peers apart by
    /// it), so a clock is no substitute: without entropy there is no id.
    pub fn generate() -> Result<PeerId, EntropyError> {
        let mut id = [0u8; 20];
        id[..8].copy_from_slice(b"-RT0100-");
        random_bytes(&mut id[8..])?;
        Ok(PeerId(id))
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

/// The operating system could not give us random bytes (the `getrandom`
/// system call and its fallbacks failed, e.g. in a sandbox that forbids
/// them). rtc never falls back to a clock or a counter: MSE private keys,
/// peer ids and tracker transaction ids would then be guessable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntropyError(getrandom::Error);

impl fmt::Display for EntropyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no random bytes from the operating system: {}", self.0)
    }
}

impl std::error::Error for EntropyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// Fills `buf` from the operating system's random source. Used for MSE
/// private keys and padding, peer ids, tracker transaction ids and seeds.
pub fn random_bytes(buf: &mut [u8]) -> Result<(), EntropyError> {
    getrandom::getrandom(buf).map_err(EntropyError)
}

/// A random number from the operating system (see [`random_bytes`]).
pub fn random_u64() -> Result<u64, EntropyError> {
    let mut b = [0u8; 8];
    random_bytes(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// A small, fast generator (xorshift64*) for choices that need spread, not
/// secrecy: tie-breaks in the picker and choker, which run many times a
/// second (a system call each time would cost more than the choice). Seeded
/// from [`random_u64`]; tests seed it to be deterministic.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // xorshift has one bad state: zero.
        Rng(seed | 1)
    }

    pub fn seeded() -> Result<Rng, EntropyError> {
        Ok(Rng::new(random_u64()?))
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
        let a = PeerId::generate().unwrap();
        let b = PeerId::generate().unwrap();
        assert_eq!(&a.0[..8], b"-RT0100-");
        assert_ne!(a, b);
    }

    #[test]
    fn random_bytes_fill_the_buffer() {
        // 64 zero bytes by chance: 2^-512.
        let mut buf = [0u8; 64];
        random_bytes(&mut buf).unwrap();
        assert_ne!(buf, [0u8; 64]);
        assert_ne!(random_u64().unwrap(), random_u64().unwrap());
    }

    #[test]
    fn entropy_error_says_what_and_why() {
        use std::error::Error as _;
        let e = EntropyError(getrandom::Error::UNSUPPORTED);
        let text = e.to_string();
        assert!(text.starts_with("no random bytes from the operating system: "));
        assert!(e.source().is_some());
    }
}
