//! Reading the opening of a connection a peer made to us, on the
//! listener's short-lived handshake thread: either a plain BitTorrent
//! handshake, or an MSE (encrypted) handshake around one. The MSE
//! arithmetic and parsing are in `mse` (pure); this file owns the socket
//! steps, each bounded in bytes and all of them by one deadline.
//! It does not answer the BitTorrent handshake: the connection thread
//! does, once the session has accepted the peer.

use super::conn::Error;
use super::message::{Handshake, HANDSHAKE_LEN};
use super::mse::{self, Cipher, PeerKey, Responder};
use crate::types::{random_bytes, random_u64, InfoHash};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const PROTOCOL: &[u8; 20] = b"\x13BitTorrent protocol";

/// A checked incoming opening.
#[derive(Debug)]
pub struct Accepted {
    pub handshake: Handshake,
    /// Set when the peer negotiated RC4: every later byte both ways goes
    /// through it.
    pub cipher: Option<Cipher>,
    /// Bytes the peer sent after its handshake (already decrypted).
    pub leftover: Vec<u8>,
    /// Whether the opening was an MSE handshake.
    pub encrypted: bool,
}

/// Reads and checks the opening within `timeout` in total, for whichever
/// of `torrents` (the session's info hashes) the peer asks for. An encrypted
/// opening is only answered when `allow_mse()` says so (the listener
/// rations the key exchange per address; it is asked only for openings
/// that are MSE) and its key is plausible.
pub fn accept_handshake(
    stream: &mut TcpStream,
    torrents: &[InfoHash],
    timeout: Duration,
    allow_mse: &dyn Fn() -> bool,
) -> Result<Accepted, Error> {
    let mut r = Reader {
        stream,
        deadline: Instant::now() + timeout,
        timeout,
        pending: Vec::with_capacity(1024),
    };
    r.fill(PROTOCOL.len())?;
    if r.pending[..PROTOCOL.len()] == PROTOCOL[..] {
        r.fill(HANDSHAKE_LEN)?;
        let bytes: [u8; HANDSHAKE_LEN] = r.take(HANDSHAKE_LEN).try_into().expect("68 bytes");
        let handshake = Handshake::decode(&bytes, None)?;
        if !torrents.contains(&handshake.info_hash) {
            return Err(Error::Protocol(super::message::Error::WrongInfoHash));
        }
        return Ok(Accepted {
            handshake,
            cipher: None,
            leftover: r.pending,
            encrypted: false,
        });
    }
    if !allow_mse() {
        return Err(Error::Mse(mse::Error::RateLimited));
    }
    encrypted(r, torrents)
}

fn encrypted(mut r: Reader<'_>, torrents: &[InfoHash]) -> Result<Accepted, Error> {
    // 1: Ya (PadA follows).
    r.fill(mse::KEY_LEN)?;
    let ya: [u8; mse::KEY_LEN] = r.take(mse::KEY_LEN).try_into().expect("96 bytes");
    // Garbage and degenerate keys are refused before any exponentiation is
    // spent on them.
    let ya = PeerKey::new(&ya).map_err(Error::Mse)?;
    let mut private = [0u8; mse::PRIVATE_LEN];
    random_bytes(&mut private).map_err(Error::Entropy)?;
    let ours = Responder::new(private);
    let shared = ours.shared(&ya);
    // 2: Yb and a random PadB.
    let mut reply = ours.public_key().to_vec();
    let mut pad = vec![0u8; (random_u64().map_err(Error::Entropy)? % 129) as usize];
    random_bytes(&mut pad).map_err(Error::Entropy)?;
    reply.extend_from_slice(&pad);
    r.stream.write_all(&reply).map_err(Error::Io)?;

    // 3: PadA ends at HASH('req1', S), then the torrent, then the offer.
    let marker = shared.sync_marker();
    loop {
        if let Some(at) = r.pending.windows(20).position(|w| w == marker) {
            r.take(at + 20);
            break;
        }
        if r.pending.len() >= mse::MAX_PAD + 20 {
            return Err(Error::Mse(mse::Error::NoSync));
        }
        r.more()?;
    }
    r.fill(20)?;
    // The peer names its torrent only as HASH('req2', SKEY) xor
    // HASH('req3', S): one hash per torrent of the session to find it.
    let marker = r.take(20);
    let info_hash = *torrents
        .iter()
        .find(|&&h| marker == shared.torrent_marker(h))
        .ok_or(Error::Mse(mse::Error::UnknownTorrent))?;
    let mut cipher = shared.cipher(info_hash);
    r.fill(mse::OFFER_LEN)?;
    let mut offer: [u8; mse::OFFER_LEN] = r.take(mse::OFFER_LEN).try_into().expect("14 bytes");
    cipher.dec.apply(&mut offer);
    let (provide, pad_c) = mse::parse_offer(&offer).map_err(Error::Mse)?;
    let selected = mse::select(provide).map_err(Error::Mse)?;
    r.fill(pad_c + 2)?;
    let mut pad_and_len = r.take(pad_c + 2);
    cipher.dec.apply(&mut pad_and_len);
    let ia_len = u16::from_be_bytes([pad_and_len[pad_c], pad_and_len[pad_c + 1]]) as usize;
    r.fill(ia_len)?;
    // The initial payload is always encrypted; what follows only with RC4.
    let mut plain = r.take(ia_len);
    cipher.dec.apply(&mut plain);

    // 4: our verification constant and choice.
    let mut answer = mse::answer(selected);
    cipher.enc.apply(&mut answer);
    r.stream.write_all(&answer).map_err(Error::Io)?;

    let rc4 = selected == mse::CRYPTO_RC4;
    let mut rest = std::mem::take(&mut r.pending);
    if rc4 {
        cipher.dec.apply(&mut rest);
    }
    plain.extend_from_slice(&rest);
    while plain.len() < HANDSHAKE_LEN {
        let mut more = r.read_some()?;
        if rc4 {
            cipher.dec.apply(&mut more);
        }
        plain.extend_from_slice(&more);
    }
    let leftover = plain.split_off(HANDSHAKE_LEN);
    let bytes: [u8; HANDSHAKE_LEN] = plain.try_into().expect("68 bytes");
    Ok(Accepted {
        handshake: Handshake::decode(&bytes, Some(info_hash))?,
        cipher: rc4.then_some(cipher),
        leftover,
        encrypted: true,
    })
}

/// Buffered reads against one deadline.
struct Reader<'a> {
    stream: &'a mut TcpStream,
    deadline: Instant,
    timeout: Duration,
    pending: Vec<u8>,
}

impl Reader<'_> {
    /// Reads whatever arrives next (at least one byte).
    fn read_some(&mut self) -> Result<Vec<u8>, Error> {
        let left = self
            .deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(Error::HandshakeTimeout(self.timeout))?;
        self.stream
            .set_read_timeout(Some(left))
            .map_err(Error::Io)?;
        let mut buf = [0u8; 1024];
        match self.stream.read(&mut buf) {
            Ok(0) => Err(Error::Closed),
            Ok(n) => Ok(buf[..n].to_vec()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(Error::HandshakeTimeout(self.timeout))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Vec::new()),
            Err(e) => Err(Error::Io(e)),
        }
    }

    fn more(&mut self) -> Result<(), Error> {
        let got = self.read_some()?;
        self.pending.extend_from_slice(&got);
        Ok(())
    }

    /// Until at least `n` bytes are pending.
    fn fill(&mut self, n: usize) -> Result<(), Error> {
        while self.pending.len() < n {
            self.more()?;
        }
        Ok(())
    }

    /// The first `n` pending bytes (which must be there).
    fn take(&mut self, n: usize) -> Vec<u8> {
        let rest = self.pending.split_off(n);
        std::mem::replace(&mut self.pending, rest)
    }
}
