//! SHA-1, the hash of BitTorrent v1 (pieces, info hashes, MSE keys, DHT
//! tokens), behind one function so no other module knows which
//! implementation runs. With the default `fast-sha1` feature it is
//! RustCrypto's `sha1`, which detects the CPU's SHA extensions at run time
//! (about 3.5x sha1_smol on this machine; md/DESIGN.md has the figures);
//! without it, the portable `sha1_smol` the design card names.

/// SHA-1 of the concatenation of `parts`.
pub(crate) fn sha1_parts(parts: &[&[u8]]) -> [u8; 20] {
    #[cfg(feature = "fast-sha1")]
    {
        use sha1::Digest;
        let mut h = sha1::Sha1::new();
        for p in parts {
            h.update(p);
        }
        h.finalize().into()
    }
    #[cfg(not(feature = "fast-sha1"))]
    {
        let mut h = sha1_smol::Sha1::new();
        for p in parts {
            h.update(p);
        }
        h.digest().bytes()
    }
}

/// SHA-1 of `data`.
pub(crate) fn sha1(data: &[u8]) -> [u8; 20] {
    sha1_parts(&[data])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answers() {
        // FIPS 180-1 test vectors.
        assert_eq!(
            crate::types::hex(&sha1(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(
            crate::types::hex(&sha1_parts(&[
                b"abcdbcdecdefdefgefghfghighij",
                b"hijkijkljklmklmnlmnomnopnopq"
            ])),
            "84983e441c3bd26ebaae4aa1f95129e5e54670f1"
        );
        assert_eq!(
            crate::types::hex(&sha1(&vec![b'a'; 1_000_000])),
            "34aa973cd4c4daa4f61eeb2bdbad27316534016f"
        );
    }
}
