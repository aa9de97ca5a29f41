//! Message Stream Encryption (MSE, "protocol encryption"), the responder
//! side, as pure code: the 768-bit Diffie-Hellman exchange, the key and
//! hash derivations, RC4, and parsing the initiator's crypto offer.
//!
//! aria2, Transmission, qBittorrent and libtorrent open connections with an
//! MSE handshake by default and only fall back to a plain one after it
//! fails (aria2 waits a second to reconnect). Answering it lets those
//! clients download from rtc at once. The socket side (reading the steps
//! in order, bounded) lives in `accept::accept_handshake`; rtc itself opens
//! plain connections, which every client accepts by default.
//!
//! MSE is obfuscation against traffic shaping, not security: there is no
//! authentication. rtc selects plaintext whenever the initiator offers it
//! (the stream then costs nothing after the handshake) and RC4 otherwise.

use crate::types::InfoHash;
use std::fmt;

/// Length of a public key (Ya, Yb) and of the shared secret S.
pub const KEY_LEN: usize = 96;
/// Longest PadA / PadB / PadC / PadD the protocol allows.
pub const MAX_PAD: usize = 512;
/// Bytes of the initiator's step 3 before PadC: VC, crypto_provide,
/// len(PadC).
pub const OFFER_LEN: usize = 8 + 4 + 2;
/// The private exponent's length (160 bits, as the protocol requires).
pub const PRIVATE_LEN: usize = 20;

pub const CRYPTO_PLAIN: u32 = 0x01;
pub const CRYPTO_RC4: u32 = 0x02;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The decrypted verification constant was not eight zero bytes.
    BadVerification,
    /// The initiator offered neither plaintext nor RC4.
    NoCommonMethod(u32),
    /// A pad length over 512.
    PadTooLong(u16),
    /// The initiator's public key would make the shared secret one an
    /// eavesdropper knows, or is not a number modulo P at all.
    BadPublicKey(WeakKey),
    /// HASH('req1', S) did not appear within PadA's 512 bytes.
    NoSync,
    /// The initiator asked for a torrent other than ours.
    UnknownTorrent,
    /// Too many encrypted openings from this address (or from everyone)
    /// lately: the key exchange costs CPU, so it is rationed.
    RateLimited,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadVerification => f.write_str("encrypted handshake: bad verification constant"),
            Error::NoCommonMethod(m) => {
                write!(
                    f,
                    "encrypted handshake: no common crypto method (offered {m:#x})"
                )
            }
            Error::PadTooLong(n) => write!(f, "encrypted handshake: pad of {n} bytes (max 512)"),
            Error::BadPublicKey(k) => write!(f, "encrypted handshake: invalid public key ({k})"),
            Error::NoSync => f.write_str("encrypted handshake: no sync marker within 512 bytes"),
            Error::UnknownTorrent => {
                f.write_str("encrypted handshake: peer asks for a different torrent")
            }
            Error::RateLimited => {
                f.write_str("encrypted handshake refused: too many lately (rate limited)")
            }
        }
    }
}

impl std::error::Error for Error {}

/// Why an initiator's public key Ya was refused. With Ya = 0 or 1 the
/// shared secret S = Ya^Xb is 0 or 1; with Ya = P-1 it is 1 or P-1; a value
/// not below P is not a residue at all. In every case anyone watching knows
/// S, and with it every RC4 key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeakKey {
    Zero,
    One,
    PMinusOne,
    NotBelowP,
}

impl fmt::Display for WeakKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WeakKey::Zero => "0",
            WeakKey::One => "1",
            WeakKey::PMinusOne => "P-1",
            WeakKey::NotBelowP => "not below P",
        })
    }
}

// ---------------------------------------------------------------------------
// 768-bit arithmetic modulo P: 24 little-endian u32 limbs. Only what the
// exchange needs (modular exponentiation).

const LIMBS: usize = 24;
type Num = [u32; LIMBS];

/// P, the protocol's 768-bit prime, big-endian.
const P_BYTES: [u8; KEY_LEN] = [
    0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xC9, 0x0F, 0xDA, 0xA2, 0x21, 0x68, 0xC2, 0x34,
    0xC4, 0xC6, 0x62, 0x8B, 0x80, 0xDC, 0x1C, 0xD1, 0x29, 0x02, 0x4E, 0x08, 0x8A, 0x67, 0xCC, 0x74,
    0x02, 0x0B, 0xBE, 0xA6, 0x3B, 0x13, 0x9B, 0x22, 0x51, 0x4A, 0x08, 0x79, 0x8E, 0x34, 0x04, 0xDD,
    0xEF, 0x95, 0x19, 0xB3, 0xCD, 0x3A, 0x43, 0x1B, 0x30, 0x2B, 0x0A, 0x6D, 0xF2, 0x5F, 0x14, 0x37,
    0x4F, 0xE1, 0x35, 0x6D, 0x6D, 0x51, 0xC2, 0x45, 0xE4, 0x85, 0xB5, 0x76, 0x62, 0x5E, 0x7E, 0xC6,
    0xF4, 0x4C, 0x42, 0xE9, 0xA6, 0x3A, 0x36, 0x21, 0x00, 0x00, 0x00, 0x00, 0x00, 0x09, 0x05, 0x63,
];

fn from_be(bytes: &[u8; KEY_LEN]) -> Num {
    let mut n = [0u32; LIMBS];
    for (i, limb) in n.iter_mut().enumerate() {
        let at = KEY_LEN - 4 * (i + 1);
        *limb = u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    }
    n
}

fn to_be(n: &Num) -> [u8; KEY_LEN] {
    let mut out = [0u8; KEY_LEN];
    for (i, limb) in n.iter().enumerate() {
        let at = KEY_LEN - 4 * (i + 1);
        out[at..at + 4].copy_from_slice(&limb.to_be_bytes());
    }
    out
}

/// a >= b, both `len` limbs (extra high limbs of `a` included).
fn ge(a: &[u32], b: &[u32]) -> bool {
    for i in (0..a.len()).rev() {
        let bi = b.get(i).copied().unwrap_or(0);
        if a[i] != bi {
            return a[i] > bi;
        }
    }
    true
}

/// a -= b (a >= b).
fn sub_in_place(a: &mut [u32], b: &[u32]) {
    let mut borrow = 0i64;
    for (i, limb) in a.iter_mut().enumerate() {
        let d = *limb as i64 - b.get(i).copied().unwrap_or(0) as i64 - borrow;
        borrow = i64::from(d < 0);
        *limb = d.rem_euclid(1 << 32) as u32;
    }
}

/// Montgomery arithmetic modulo P (R = 2^768): one multiplication costs
/// two passes over the limbs instead of a bit-by-bit reduction, which
/// keeps an MSE handshake well under a millisecond of CPU.
struct Mont {
    p: Num,
    /// -P^-1 mod 2^32.
    p_inv: u32,
    /// R^2 mod P, to bring numbers into Montgomery form.
    r2: Num,
}

impl Mont {
    fn new(p: Num) -> Mont {
        // Newton's iteration doubles the correct low bits each round.
        let mut inv = 1u32;
        for _ in 0..5 {
            inv = inv.wrapping_mul(2u32.wrapping_sub(p[0].wrapping_mul(inv)));
        }
        // R^2 mod P = 2^1536 mod P by doubling, kept below P throughout.
        let mut r = [0u32; LIMBS + 1];
        r[0] = 1;
        for _ in 0..2 * LIMBS * 32 {
            let mut carry = 0;
            for limb in r.iter_mut() {
                let next = *limb >> 31;
                *limb = (*limb << 1) | carry;
                carry = next;
            }
            if ge(&r, &p) {
                sub_in_place(&mut r, &p);
            }
        }
        let mut r2 = [0u32; LIMBS];
        r2.copy_from_slice(&r[..LIMBS]);
        Mont {
            p,
            p_inv: inv.wrapping_neg(),
            r2,
        }
    }

    /// a * b * R^-1 mod P, for a, b < P (coarsely integrated operand
    /// scanning).
    fn mul(&self, a: &Num, b: &Num) -> Num {
        let mut t = [0u32; LIMBS + 2];
        for &bi in b.iter() {
            let mut carry = 0u64;
            for (tj, &aj) in t.iter_mut().zip(a.iter()) {
                let v = *tj as u64 + aj as u64 * bi as u64 + carry;
                *tj = v as u32;
                carry = v >> 32;
            }
            let v = t[LIMBS] as u64 + carry;
            t[LIMBS] = v as u32;
            t[LIMBS + 1] = (v >> 32) as u32;
            // Add m * P so the lowest limb becomes zero, then shift it out.
            let m = t[0].wrapping_mul(self.p_inv);
            let mut carry = (t[0] as u64 + m as u64 * self.p[0] as u64) >> 32;
            for j in 1..LIMBS {
                let v = t[j] as u64 + m as u64 * self.p[j] as u64 + carry;
                t[j - 1] = v as u32;
                carry = v >> 32;
            }
            let v = t[LIMBS] as u64 + carry;
            t[LIMBS - 1] = v as u32;
            t[LIMBS] = t[LIMBS + 1] + (v >> 32) as u32;
        }
        let mut r = [0u32; LIMBS + 1];
        r.copy_from_slice(&t[..=LIMBS]);
        if ge(&r, &self.p) {
            sub_in_place(&mut r, &self.p);
        }
        let mut out = [0u32; LIMBS];
        out.copy_from_slice(&r[..LIMBS]);
        out
    }

    /// base^exp mod P, base < P, exp big-endian of any length.
    fn pow(&self, base: &Num, exp: &[u8]) -> Num {
        let mut one = [0u32; LIMBS];
        one[0] = 1;
        let base = self.mul(base, &self.r2);
        let mut acc = self.mul(&one, &self.r2);
        for byte in exp {
            for bit in (0..8).rev() {
                acc = self.mul(&acc, &acc);
                if (byte >> bit) & 1 == 1 {
                    acc = self.mul(&acc, &base);
                }
            }
        }
        self.mul(&acc, &one)
    }
}

// ---------------------------------------------------------------------------

/// RC4, as MSE uses it: keyed with a SHA-1 digest, first 1024 bytes of the
/// keystream discarded. The key is a 20-byte array, so an empty key (which
/// RC4's key schedule cannot use) cannot be written.
#[derive(Clone)]
pub struct Rc4 {
    s: [u8; 256],
    i: u8,
    j: u8,
}

impl fmt::Debug for Rc4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Rc4")
    }
}

impl Rc4 {
    /// RC4 keyed with a SHA-1 digest, as every MSE key is.
    pub fn new(key: &[u8; 20]) -> Rc4 {
        Rc4::with_key(key)
    }

    /// Any non-empty key length (checked when compiled); tests use the
    /// published short-key vectors.
    fn with_key<const N: usize>(key: &[u8; N]) -> Rc4 {
        const { assert!(N > 0, "an RC4 key has at least one byte") };
        let mut s = [0u8; 256];
        for (i, v) in s.iter_mut().enumerate() {
            *v = i as u8;
        }
        let mut j = 0u8;
        for i in 0..256 {
            j = j.wrapping_add(s[i]).wrapping_add(key[i % N]);
            s.swap(i, j as usize);
        }
        Rc4 { s, i: 0, j: 0 }
    }

    /// XORs the keystream into `data` (encrypts and decrypts alike).
    pub fn apply(&mut self, data: &mut [u8]) {
        for b in data {
            self.i = self.i.wrapping_add(1);
            self.j = self.j.wrapping_add(self.s[self.i as usize]);
            self.s.swap(self.i as usize, self.j as usize);
            let k =
                self.s[(self.s[self.i as usize].wrapping_add(self.s[self.j as usize])) as usize];
            *b ^= k;
        }
    }

    fn discarding_1024(key: &[u8; 20]) -> Rc4 {
        let mut rc4 = Rc4::new(key);
        rc4.apply(&mut [0u8; 1024]);
        rc4
    }
}

/// The ciphers of an RC4-selected connection: `dec` for what the peer
/// sends, `enc` for what we send.
#[derive(Debug, Clone)]
pub struct Cipher {
    pub dec: Rc4,
    pub enc: Rc4,
}

fn hash(parts: &[&[u8]]) -> [u8; 20] {
    crate::hash::sha1_parts(parts)
}

/// Our side of the exchange, from a random 160-bit private key.
pub struct Responder {
    private: [u8; PRIVATE_LEN],
    mont: Mont,
}

impl Responder {
    pub fn new(private: [u8; PRIVATE_LEN]) -> Responder {
        Responder {
            private,
            mont: Mont::new(from_be(&P_BYTES)),
        }
    }

    /// Yb = 2^Xb mod P.
    pub fn public_key(&self) -> [u8; KEY_LEN] {
        let mut two = [0u32; LIMBS];
        two[0] = 2;
        to_be(&self.mont.pow(&two, &self.private))
    }

    /// S = Ya^Xb mod P. Only a checked key gets here, so S is never one
    /// an eavesdropper could name.
    pub fn shared(&self, ya: &PeerKey) -> Shared {
        Shared {
            s: to_be(&self.mont.pow(&ya.0, &self.private)),
        }
    }
}

/// The initiator's public key Ya, known to lie in 2..=P-2: the only way to
/// make one is [`PeerKey::new`], which refuses the rest.
pub struct PeerKey(Num);

impl PeerKey {
    /// Checks `ya` before any modular exponentiation is spent on it (cheap:
    /// a few comparisons).
    pub fn new(ya: &[u8; KEY_LEN]) -> Result<PeerKey, Error> {
        let y = from_be(ya);
        let p = from_be(&P_BYTES);
        let mut p_minus_1 = p;
        p_minus_1[0] -= 1; // P is odd: no borrow
        let small = |v: u32| y[0] == v && y[1..].iter().all(|&limb| limb == 0);
        let weak = if small(0) {
            WeakKey::Zero
        } else if small(1) {
            WeakKey::One
        } else if y == p_minus_1 {
            WeakKey::PMinusOne
        } else if ge(&y, &p) {
            WeakKey::NotBelowP
        } else {
            return Ok(PeerKey(y));
        };
        Err(Error::BadPublicKey(weak))
    }
}

/// The shared secret S and what is derived from it.
pub struct Shared {
    s: [u8; KEY_LEN],
}

impl Shared {
    /// HASH('req1', S): the marker that ends PadA.
    pub fn sync_marker(&self) -> [u8; 20] {
        hash(&[b"req1", &self.s])
    }

    /// HASH('req2', SKEY) xor HASH('req3', S) for our torrent: the
    /// initiator names the torrent this way.
    pub fn torrent_marker(&self, info_hash: InfoHash) -> [u8; 20] {
        let a = hash(&[b"req2", &info_hash.0]);
        let b = hash(&[b"req3", &self.s]);
        let mut out = [0u8; 20];
        for i in 0..20 {
            out[i] = a[i] ^ b[i];
        }
        out
    }

    /// The initiator encrypts with keyA, we with keyB.
    pub fn cipher(&self, info_hash: InfoHash) -> Cipher {
        Cipher {
            dec: Rc4::discarding_1024(&hash(&[b"keyA", &self.s, &info_hash.0])),
            enc: Rc4::discarding_1024(&hash(&[b"keyB", &self.s, &info_hash.0])),
        }
    }
}

/// The decrypted VC, crypto_provide and len(PadC): returns the offer and
/// PadC's length.
pub fn parse_offer(plain: &[u8; OFFER_LEN]) -> Result<(u32, usize), Error> {
    if plain[..8] != [0u8; 8] {
        return Err(Error::BadVerification);
    }
    let provide = u32::from_be_bytes([plain[8], plain[9], plain[10], plain[11]]);
    let pad = u16::from_be_bytes([plain[12], plain[13]]);
    if pad as usize > MAX_PAD {
        return Err(Error::PadTooLong(pad));
    }
    Ok((provide, pad as usize))
}

/// Plaintext when offered (nothing to pay per byte), else RC4.
pub fn select(provide: u32) -> Result<u32, Error> {
    if provide & CRYPTO_PLAIN != 0 {
        Ok(CRYPTO_PLAIN)
    } else if provide & CRYPTO_RC4 != 0 {
        Ok(CRYPTO_RC4)
    } else {
        Err(Error::NoCommonMethod(provide))
    }
}

/// Step 4 before encryption: VC, crypto_select, len(PadD) = 0.
pub fn answer(selected: u32) -> [u8; OFFER_LEN] {
    let mut out = [0u8; OFFER_LEN];
    out[8..12].copy_from_slice(&selected.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len() / 2)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    }

    const EXPECTED_2_POW_X: &str = "96e112dab29e8c5272accb9b17b26887ce54a144a4e3b697c7d159b7a817e556b0918db2b4c658e02a87f7e5fb14b18a553e084cbf3dad2d30f16596ccb982d406258c61b30c5c1dae2ddc60bdbd48d79896312aad63238c39e1a633821eb693";

    #[test]
    fn rc4_known_vectors() {
        let mut d = *b"Plaintext";
        Rc4::with_key(b"Key").apply(&mut d);
        assert_eq!(d.to_vec(), unhex("bbf316e8d940af0ad3"));
        let mut d = *b"pedia";
        Rc4::with_key(b"Wiki").apply(&mut d);
        assert_eq!(d.to_vec(), unhex("1021bf0420"));
    }

    #[test]
    fn the_prime_round_trips() {
        assert_eq!(to_be(&from_be(&P_BYTES)), P_BYTES);
    }

    #[test]
    fn public_key_matches_python_pow() {
        // pow(2, 0x0102...14, P) computed with Python's integers.
        let mut x = [0u8; PRIVATE_LEN];
        for (i, b) in x.iter_mut().enumerate() {
            *b = i as u8 + 1;
        }
        let y = Responder::new(x).public_key();
        assert_eq!(y.to_vec(), unhex(EXPECTED_2_POW_X));
    }

    #[test]
    fn shared_secret_matches_python_pow() {
        // pow(EXPECTED_2_POW_X, 0xa5a5...a5, P) with Python's integers.
        let ya: [u8; KEY_LEN] = unhex(EXPECTED_2_POW_X).try_into().unwrap();
        let ya = PeerKey::new(&ya).unwrap();
        let s = Responder::new([0xa5; PRIVATE_LEN]).shared(&ya);
        assert_eq!(s.s.to_vec(), unhex("8be8cddb2a0c9f861334a12da32887367689533c8e4ef85111538f02e0815d122b48acc1e8d6380b0ea64f4ec96d12b1aadc7101a17deccebce8e3673d63826d8a449a2d43391da0e76d3933c0a0b5ec0fbee0d742fa932e9e7cede4fdbc3afe"));
    }

    #[test]
    fn both_sides_derive_the_same_secret() {
        let a = Responder::new([7u8; PRIVATE_LEN]);
        let b = Responder::new([0x5au8; PRIVATE_LEN]);
        let sa = a.shared(&PeerKey::new(&b.public_key()).unwrap());
        let sb = b.shared(&PeerKey::new(&a.public_key()).unwrap());
        assert_eq!(sa.s, sb.s);
        let ih = InfoHash([3; 20]);
        assert_eq!(sa.torrent_marker(ih), sb.torrent_marker(ih));
        // keyA on one side decrypts what keyA on the other encrypts.
        let (mut ca, mut cb) = (sa.cipher(ih), sb.cipher(ih));
        let mut msg = *b"hello, peer";
        ca.dec.apply(&mut msg);
        assert_ne!(&msg, b"hello, peer");
        cb.dec.apply(&mut msg);
        assert_eq!(&msg, b"hello, peer");
    }

    fn refusal(ya: &[u8; KEY_LEN]) -> Option<WeakKey> {
        match PeerKey::new(ya) {
            Ok(_) => None,
            Err(Error::BadPublicKey(k)) => Some(k),
            Err(e) => panic!("unexpected {e}"),
        }
    }

    fn small(v: u8) -> [u8; KEY_LEN] {
        let mut k = [0u8; KEY_LEN];
        k[KEY_LEN - 1] = v;
        k
    }

    #[test]
    fn zero_is_refused() {
        assert_eq!(refusal(&small(0)), Some(WeakKey::Zero));
    }

    #[test]
    fn one_is_refused() {
        assert_eq!(refusal(&small(1)), Some(WeakKey::One));
        // 1 in a limb other than the lowest is a large number, not 1.
        let mut high = [0u8; KEY_LEN];
        high[KEY_LEN - 5] = 1;
        assert_eq!(refusal(&high), None);
    }

    #[test]
    fn p_minus_1_is_refused() {
        let mut p_minus_1 = P_BYTES;
        p_minus_1[KEY_LEN - 1] -= 1;
        assert_eq!(refusal(&p_minus_1), Some(WeakKey::PMinusOne));
        assert_eq!(
            Error::BadPublicKey(WeakKey::PMinusOne).to_string(),
            "encrypted handshake: invalid public key (P-1)"
        );
    }

    #[test]
    fn p_and_above_are_refused() {
        assert_eq!(refusal(&P_BYTES), Some(WeakKey::NotBelowP));
        let mut p_plus_1 = P_BYTES;
        p_plus_1[KEY_LEN - 1] += 1;
        assert_eq!(refusal(&p_plus_1), Some(WeakKey::NotBelowP));
        assert_eq!(refusal(&[0xff; KEY_LEN]), Some(WeakKey::NotBelowP));
    }

    #[test]
    fn keys_from_2_to_p_minus_2_are_taken() {
        assert_eq!(refusal(&small(2)), None);
        let mut p_minus_2 = P_BYTES;
        p_minus_2[KEY_LEN - 1] -= 2;
        assert_eq!(refusal(&p_minus_2), None);
        let honest = Responder::new([9; PRIVATE_LEN]).public_key();
        assert_eq!(refusal(&honest), None);
    }

    #[test]
    fn offers_and_selection() {
        let mut offer = [0u8; OFFER_LEN];
        offer[11] = 3;
        offer[13] = 200;
        assert_eq!(parse_offer(&offer), Ok((3, 200)));
        assert_eq!(select(3), Ok(CRYPTO_PLAIN));
        assert_eq!(select(2), Ok(CRYPTO_RC4));
        assert_eq!(select(4), Err(Error::NoCommonMethod(4)));
        offer[12] = 2; // 712 bytes of PadC
        assert_eq!(parse_offer(&offer), Err(Error::PadTooLong(712)));
        offer[0] = 1;
        assert_eq!(parse_offer(&offer), Err(Error::BadVerification));
        assert_eq!(&answer(CRYPTO_RC4)[8..], &[0, 0, 0, 2, 0, 0]);
    }
}
