//! One peer connection on one OS thread, over a blocking `TcpStream`.
//! Owns the socket, the receive buffer, the timeouts and the channels to the
//! session. Takes piece indices from its work channel and hands complete
//! (unverified) pieces back; which blocks to request and how they assemble
//! is `download`'s, what to serve is `upload`'s. It never verifies, never
//! writes to disk and never decides which peers to connect to.

use super::download::{BlockError, Fetcher, Next, Received};
use super::extension::{self, ExtHandshake, ExtKind, MetadataMsg};
use super::message::{self, decode_frame, Bitfield, Handshake, Message};
use super::upload::{Refusal, Upload};
use super::{Command, CompletedPiece, ConnId, Event, Incoming};
use crate::geometry::{Layout, BLOCK_LEN};
use crate::storage::Storage;
use crate::types::{InfoHash, PeerId, PieceIndex};
use crossbeam_channel::{Receiver, Sender};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Timeouts and pipeline depth of each peer connection. `Default` holds
/// the values rtc uses.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Limits {
    /// Bound on a TCP connect (an in-flight dial is the one thing a
    /// shutdown waits for, so keep it short).
    pub connect: Duration,
    /// Bound on reading the peer's handshake after connecting.
    pub handshake: Duration,
    /// Bound on one blocked write (a peer that stops reading).
    pub write: Duration,
    /// How long the thread blocks in `read` before it looks at its commands
    /// and its work channel again.
    pub poll: Duration,
    /// Requests outstanding with no block arriving for this long: the peer
    /// is stalled and dropped so its pieces go back to the queue.
    pub stall: Duration,
    /// No bytes at all for this long: dropped (peers keep-alive every 2 min).
    pub idle: Duration,
    /// Choked while holding pieces for this long: give them back.
    pub choked_hold: Duration,
    /// 16 KiB requests kept in flight (see md/DESIGN.md for the measurement).
    pub pipeline: usize,
}

impl Limits {
    /// These limits with every duration between 1 ms and a year and the
    /// pipeline between 1 and 1024: the fields are public, and a zero
    /// socket timeout is an error while `Instant + Duration::MAX`
    /// overflows.
    pub(crate) fn sane(&self) -> Limits {
        let d = |x: Duration| x.clamp(Duration::from_millis(1), Duration::from_secs(365 * 86_400));
        Limits {
            connect: d(self.connect),
            handshake: d(self.handshake),
            write: d(self.write),
            poll: d(self.poll),
            stall: d(self.stall),
            idle: d(self.idle),
            choked_hold: d(self.choked_hold),
            pipeline: self.pipeline.clamp(1, 1024),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connect: Duration::from_secs(5),
            handshake: Duration::from_secs(10),
            write: Duration::from_secs(30),
            poll: Duration::from_millis(100),
            stall: Duration::from_secs(30),
            idle: Duration::from_secs(150),
            choked_hold: Duration::from_secs(20),
            pipeline: 128,
        }
    }
}

#[derive(Debug)]
pub enum Error {
    Connect(io::Error),
    Io(io::Error),
    Closed,
    Protocol(message::Error),
    SelfConnection,
    BadBitfield,
    /// More than `MAX_CHOKES` chokes within `CHOKE_WINDOW`: each one makes
    /// us re-request a whole pipeline.
    ChokeFlood,
    BadHave(u32),
    BadBlock {
        piece: u32,
        offset: u32,
        len: usize,
    },
    Unrequested {
        piece: u32,
    },
    HandshakeTimeout(Duration),
    Stalled(Duration),
    Idle(Duration),
    /// The session asked us to go (ban after bad data, or shutdown).
    SessionGone,
    /// The peer asked for something we must not or cannot serve.
    BadRequest(Refusal),
    /// Reading a verified piece back from disk failed.
    Storage(String),
    /// An incoming encrypted (MSE) handshake failed.
    Mse(super::mse::Error),
    /// No random bytes for our side of an encrypted handshake. Our
    /// failure, not the peer's: never a ban.
    Entropy(crate::types::EntropyError),
    /// A malformed or out-of-bounds extension message (BEP 10/9/11).
    Extension(extension::ExtError),
    /// Fetching metadata needs the extension protocol, which the peer
    /// does not speak.
    NoExtensions,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Connect(e) => write!(f, "connect failed: {e}"),
            Error::Io(e) => write!(f, "connection error: {e}"),
            Error::Closed => f.write_str("peer closed the connection"),
            Error::Protocol(e) => write!(f, "protocol error: {e}"),
            Error::SelfConnection => f.write_str("connected to ourselves"),
            Error::BadBitfield => f.write_str("bitfield of the wrong size or with spare bits set"),
            Error::ChokeFlood => write!(
                f,
                "choked us more than {MAX_CHOKES} times in {}s",
                CHOKE_WINDOW.as_secs()
            ),
            Error::BadHave(i) => write!(f, "have for piece {i}, which does not exist"),
            Error::BadBlock { piece, offset, len } => {
                write!(
                    f,
                    "block piece {piece} offset {offset} length {len} is out of range"
                )
            }
            Error::Unrequested { piece } => {
                write!(f, "sent piece {piece}, which we never asked for")
            }
            Error::Stalled(d) => write!(
                f,
                "no block for {}s while requests were pending",
                d.as_secs()
            ),
            Error::Idle(d) => write!(f, "silent for {}s", d.as_secs()),
            Error::HandshakeTimeout(d) => write!(f, "no handshake within {}s", d.as_secs()),
            Error::SessionGone => f.write_str("session ended"),
            Error::BadRequest(Refusal::OutOfRange) => write!(
                f,
                "requested a block outside the torrent or over {} KiB",
                BLOCK_LEN / 1024
            ),
            Error::BadRequest(Refusal::NotHave) => f.write_str("requested a piece we do not have"),
            Error::BadRequest(Refusal::Flood) => f.write_str("flooded us with requests"),
            Error::Storage(e) => write!(f, "cannot serve: {e}"),
            Error::Mse(e) => write!(f, "{e}"),
            Error::Entropy(e) => write!(f, "{e}"),
            Error::Extension(e) => write!(f, "{e}"),
            Error::NoExtensions => {
                f.write_str("no extension protocol (BEP 10): cannot send metadata")
            }
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    /// The peer broke the protocol (as opposed to a network failure or a
    /// timeout): rtc never connects to it again.
    pub fn is_misbehaviour(&self) -> bool {
        matches!(
            self,
            Error::Protocol(_)
                | Error::Mse(_)
                | Error::SelfConnection
                | Error::BadBitfield
                | Error::ChokeFlood
                | Error::BadHave(_)
                | Error::BadBlock { .. }
                | Error::Unrequested { .. }
                | Error::BadRequest(_)
                | Error::Extension(_)
        )
    }
}

impl From<message::Error> for Error {
    fn from(e: message::Error) -> Self {
        Error::Protocol(e)
    }
}

/// Everything a connection thread needs, moved into it at spawn.
pub struct Params {
    pub id: ConnId,
    pub addr: SocketAddr,
    pub info_hash: InfoHash,
    pub peer_id: PeerId,
    pub layout: Arc<Layout>,
    /// Pieces we already have (verified and written) when the thread starts.
    pub have: Bitfield,
    /// Pieces the download does not want (only bytes of files not
    /// selected): never interesting in a peer. `None`: every piece is.
    pub unwanted: Option<Arc<Bitfield>>,
    /// This connection's own work channel: the session puts the pieces it
    /// assigns here (see `peer::Event` for how each is answered).
    pub work: Receiver<PieceIndex>,
    pub events: Sender<Event>,
    /// Whole pieces, handed over in batches: every piece completed by one
    /// read goes in one message, so small pieces cost one wake-up of the
    /// session per read rather than one each.
    pub pieces: Sender<Vec<CompletedPiece>>,
    pub commands: Receiver<Command>,
    pub limits: Limits,
    /// Verified pieces are read from here to serve requests.
    pub storage: Arc<Storage>,
    /// For a connection the peer opened (handshake already read).
    pub incoming: Option<Incoming>,
    /// The torrent's info dict, served to peers that ask (BEP 9).
    pub info: Arc<[u8]>,
    /// The port we accept peers on, told in the extension handshake.
    pub listen_port: Option<u16>,
    /// A private torrent (BEP 27): no peer exchange either way.
    pub private: bool,
    /// Where the thread puts a handle on its socket, so the session can
    /// close it however the thread is blocked.
    pub closer: super::Closer,
    /// Spare piece buffers, refilled by the writer.
    pub buffers: crate::buffers::Buffers,
    /// The session's rate limits, shared by all its connections.
    pub throttle: Arc<crate::throttle::Throttle>,
    /// Dropped when the thread ends: the session's connection permit.
    #[allow(dead_code)] // held, never read
    pub hold: Box<dyn Send>,
}

pub fn spawn(p: Params) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("rtc-peer-{}", p.addr))
        .spawn(move || run(p))
}

/// Thread body: whatever happens, report `Exited` (the session then lets go
/// of every piece it had assigned us).
fn run(p: Params) {
    let events = p.events.clone();
    let (id, addr) = (p.id, p.addr);
    let mut conn = Conn::new(p);
    let result = conn.run();
    // Last counters, so that bytes moved since the last report count too.
    let _ = events.send(conn.stats());
    let error = match result {
        Ok(()) => None,
        Err(e) => {
            log::debug!("peer {addr}: {e}");
            Some(e)
        }
    };
    let _ = events.send(Event::Exited {
        id,
        addr,
        error,
        connected: conn.connected,
    });
}

struct Conn {
    p: Params,
    connected: bool,
    remote: Bitfield,
    ours: Bitfield,
    choked_since: Instant,
    out: Vec<u8>,
    last_block: Instant,
    last_recv: Instant,
    last_send: Instant,
    /// Under a download limit: no bytes are read before this (the debt of
    /// what was read is paid first, even when a command cut a wait short).
    read_after: Instant,
    /// Under an upload limit: no more piece bytes are queued before this.
    send_after: Instant,
    /// Time already waited for a block when the peer choked us: the stall
    /// clock resumes from there, so choke/unchoke games cannot reset it.
    stall_carry: Duration,
    /// Choke state last reported to the session (reported once per loop
    /// turn at most, and only when it changed).
    reported_choking: bool,
    /// Chokes since `choke_window_start`.
    chokes: u32,
    choke_window_start: Instant,
    upload: Upload,
    download: Fetcher,
    last_stats: Instant,
    stats_due: bool,
    /// Pieces we have or do not want: `ours` plus `Params::unwanted`.
    needless: Bitfield,
    /// Pieces the peer has that we need; we are interested while non-zero.
    wanted: u32,
    am_interested: bool,
    /// A bitfield or a `have` arrived: a later bitfield only adds pieces.
    got_pieces_msg: bool,
    /// Requests received since the last stats report.
    requests: u32,
    /// RC4 both ways when an incoming peer negotiated it (MSE).
    cipher: Option<super::mse::Cipher>,
    /// The peer's extension handshake (BEP 10), once it sent one.
    peer_ext: Option<ExtHandshake>,
    /// When the peer's last PEX message was taken.
    last_pex: Option<Instant>,
    /// Pieces completed by the frames being handled, sent as one batch.
    finished: Vec<CompletedPiece>,
}

/// Bytes of queued output beyond which `ut_metadata` requests are
/// rejected rather than answered (see `on_extended`).
const MAX_METADATA_BACKLOG: usize = 256 * 1024;
/// Least time between two PEX messages taken from a peer (BEP 11: one a
/// minute; a little slack for clocks).
const PEX_EVERY: Duration = Duration::from_secs(50);
const STATS_EVERY: Duration = Duration::from_secs(1);
/// Chokes allowed within `CHOKE_WINDOW`. Clients rechoke every 10-15 s;
/// a peer that flaps faster makes us re-request our whole pipeline each
/// time for nothing.
const MAX_CHOKES: u32 = 20;
const CHOKE_WINDOW: Duration = Duration::from_secs(10);
/// Bytes of piece data queued per loop turn when serving: large enough that
/// the short read timeout while serving costs little.
const SERVE_BUDGET: usize = 1024 * 1024;
/// Read timeout while we have requests to serve: just a glance for new
/// messages before sending more.
const SERVING_POLL: Duration = Duration::from_millis(1);

impl Conn {
    fn new(p: Params) -> Conn {
        let n = p.layout.piece_count();
        let download = Fetcher::new(&p.layout, p.limits.pipeline);
        let now = Instant::now();
        let mut needless = p.have.clone();
        if let Some(skip) = &p.unwanted {
            needless.union_with(skip);
        }
        Conn {
            needless,
            ours: p.have.clone(),
            p,
            connected: false,
            remote: Bitfield::new(n),
            choked_since: now,
            out: Vec::with_capacity(4096),
            last_block: now,
            last_recv: now,
            last_send: now,
            read_after: now,
            send_after: now,
            stall_carry: Duration::ZERO,
            reported_choking: true,
            chokes: 0,
            choke_window_start: now,
            upload: Upload::default(),
            download,
            last_stats: now,
            stats_due: false,
            wanted: 0,
            am_interested: false,
            got_pieces_msg: false,
            requests: 0,
            cipher: None,
            peer_ext: None,
            last_pex: None,
            finished: Vec::new(),
        }
    }

    fn run(&mut self) -> Result<(), Error> {
        let limits = self.p.limits.clone();
        let mut ours = Handshake::new(self.p.info_hash, self.p.peer_id);
        // BEP 10: we serve the info dict (`ut_metadata`) to peers that
        // came with a magnet link.
        extension::set_extension_bit(&mut ours.reserved);
        let mut leftover = Vec::new();
        let (mut stream, theirs) = match self.p.incoming.take() {
            Some(inc) => {
                // The listener read and checked their opening; answer it.
                let mut stream = inc.stream;
                stream
                    .set_write_timeout(Some(limits.write))
                    .map_err(Error::Io)?;
                self.cipher = inc.accepted.cipher;
                leftover = inc.accepted.leftover;
                let mut reply = ours.encode();
                if let Some(c) = self.cipher.as_mut() {
                    c.enc.apply(&mut reply);
                }
                stream.write_all(&reply).map_err(Error::Io)?;
                (stream, inc.accepted.handshake)
            }
            None => {
                let Some(mut stream) = dial(self.p.addr, &limits, &self.p.closer)? else {
                    return Ok(()); // shut down while connecting
                };
                stream.write_all(&ours.encode()).map_err(Error::Io)?;
                let theirs = read_handshake(&mut stream, limits.handshake)?;
                (stream, Handshake::decode(&theirs, Some(self.p.info_hash))?)
            }
        };
        stream.set_nodelay(true).map_err(Error::Io)?;
        if theirs.peer_id == self.p.peer_id {
            return Err(Error::SelfConnection);
        }
        self.connected = true;
        if self
            .p
            .events
            .send(Event::Connected {
                id: self.p.id,
                peer_id: theirs.peer_id,
            })
            .is_err()
        {
            return Err(Error::SessionGone);
        }
        log::debug!("peer {}: connected", self.p.addr);
        stream
            .set_read_timeout(Some(limits.poll))
            .map_err(Error::Io)?;

        if self.ours.count() > 0 {
            message::encode(&Message::Bitfield(self.ours.as_bytes()), &mut self.out);
        }
        if extension::has_extension_bit(&theirs.reserved) {
            let mut hello = ExtHandshake::ours(
                u32::try_from(self.p.info.len()).ok(),
                self.p.listen_port,
                Some(self.p.addr.ip()),
            );
            if self.p.private {
                // BEP 27: peers of a private torrent come from its
                // trackers only, and its metadata is not handed to whoever
                // knows the info hash (libtorrent does the same).
                hello.ut_pex = None;
                hello.ut_metadata = None;
                hello.metadata_size = None;
            }
            if !self.serves_metadata() {
                hello.ut_metadata = None;
                hello.metadata_size = None;
            }
            message::encode(
                &Message::Extended {
                    id: extension::HANDSHAKE_ID,
                    payload: &hello.encode(),
                },
                &mut self.out,
            );
        }
        // `interested` follows once the peer shows a piece we lack.

        let max_frame = message::max_frame_for(self.p.layout.piece_count());
        let mut rx = RecvBuf::new(max_frame as usize + 4);
        let mut read_timeout = limits.poll;
        // What the peer sent along with its handshake (an MSE opening can
        // carry up to 64 KiB; the buffer holds at least 256 KiB).
        if !leftover.is_empty() {
            if leftover.len() > rx.space().len() {
                return Err(Error::Closed);
            }
            rx.space()[..leftover.len()].copy_from_slice(&leftover);
            rx.filled(leftover.len());
            self.handle_frames(&mut rx, max_frame)?;
        }
        loop {
            while let Ok(cmd) = self.p.commands.try_recv() {
                match cmd {
                    Command::Have(pieces) => {
                        for &piece in pieces.iter() {
                            self.on_have_cmd(piece);
                        }
                    }
                    Command::Done(piece) => {
                        self.on_have_cmd(piece);
                        self.drop_copy(piece)?;
                    }
                    Command::Unchoke => {
                        if self.upload.am_choking {
                            self.upload.am_choking = false;
                            message::encode(&Message::Unchoke, &mut self.out);
                        }
                    }
                    Command::Choke => {
                        if !self.upload.am_choking {
                            self.upload.choke();
                            message::encode(&Message::Choke, &mut self.out);
                        }
                    }
                    Command::Pex(view) => {
                        let to = self.peer_ext.as_ref().and_then(|e| e.ut_pex);
                        if let (Some(to), false) = (to, self.p.private) {
                            message::encode(
                                &Message::Extended {
                                    id: to,
                                    payload: &view.encode(),
                                },
                                &mut self.out,
                            );
                        }
                    }
                    Command::Shutdown => return Ok(()),
                }
            }
            if self.needless.is_full() && self.remote.is_full() {
                // Two seeds (or a seed of what we want and a seed) have
                // nothing to say.
                return Ok(());
            }
            if !self.needless.is_full() && !self.download.is_choked() {
                self.fill_pipeline()?;
            }
            if self.upload.has_work() && Instant::now() >= self.send_after {
                let budget = self.p.throttle.send_chunk().unwrap_or(SERVE_BUDGET);
                let before = self.out.len();
                self.upload
                    .serve(&self.p.storage, &mut self.out, budget)
                    .map_err(|e| Error::Storage(e.to_string()))?;
                // Under an upload limit these bytes go now, and the next
                // ones once their cost is paid.
                let wait = self.p.throttle.sending(self.out.len() - before);
                self.send_after = Instant::now() + wait;
            }
            let want = if self.upload.has_work() {
                // Waiting for the upload limit blocks in `read` until then.
                self.send_after
                    .saturating_duration_since(Instant::now())
                    .clamp(SERVING_POLL, limits.poll)
            } else {
                limits.poll
            };
            if want != read_timeout {
                stream.set_read_timeout(Some(want)).map_err(Error::Io)?;
                read_timeout = want;
            }
            if self.download.is_choked() != self.reported_choking {
                self.reported_choking = self.download.is_choked();
                self.send_event(Event::Choked {
                    id: self.p.id,
                    choked: self.reported_choking,
                })?;
            }
            let now = Instant::now();
            if self.stats_due || now.duration_since(self.last_stats) >= STATS_EVERY {
                self.last_stats = now;
                self.stats_due = false;
                let stats = self.stats();
                self.send_event(stats)?;
            }
            if self.out.is_empty() && now.duration_since(self.last_send) > limits.idle / 2 {
                message::encode(&Message::KeepAlive, &mut self.out);
            }
            if !self.out.is_empty() {
                if let Some(c) = self.cipher.as_mut() {
                    c.enc.apply(&mut self.out);
                }
                stream.write_all(&self.out).map_err(Error::Io)?;
                self.out.clear();
                self.last_send = now;
            }

            let now = Instant::now();
            if now < self.read_after {
                // Our download limit's debt is not paid yet: nothing is
                // read until it is, but commands (which cut the wait short)
                // and serving go on (serving as soon as the upload limit
                // allows).
                let mut until = self.read_after;
                if self.upload.has_work() {
                    until = until.min(self.send_after);
                }
                self.wait_off(until.saturating_duration_since(now));
                // Time spent under our own limit is not the peer stalling.
                self.last_block = Instant::now();
                continue;
            }
            // Under a download limit, reads are small so one never buys a
            // long wait.
            let chunk = self.p.throttle.read_chunk().unwrap_or(usize::MAX);
            let space = rx.space();
            let take = space.len().min(chunk);
            match stream.read(&mut space[..take]) {
                Ok(0) => return Err(Error::Closed),
                Ok(n) => {
                    if let Some(c) = self.cipher.as_mut() {
                        c.dec.apply(&mut rx.space()[..n]);
                    }
                    rx.filled(n);
                    self.last_recv = Instant::now();
                    self.handle_frames(&mut rx, max_frame)?;
                    // The debt, if any, is waited off before the next
                    // read (above).
                    self.read_after = Instant::now() + self.p.throttle.received(n);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(Error::Io(e)),
            }

            let now = Instant::now();
            if self.download.in_flight() > 0 && now.duration_since(self.last_block) > limits.stall {
                return Err(Error::Stalled(limits.stall));
            }
            if now.duration_since(self.last_recv) > limits.idle {
                return Err(Error::Idle(limits.idle));
            }
            if self.download.is_choked()
                && (self.download.holds_any() || !self.p.work.is_empty())
                && now.duration_since(self.choked_since) > limits.choked_hold
            {
                self.abandon_all()?;
            }
        }
    }

    /// Handles every whole frame in `rx`, keeping a partial one, then
    /// hands the pieces they completed to the session.
    /// Pieces completed before a frame that ends the connection are still
    /// handed over: they are whole, and the hash check judges them.
    fn handle_frames(&mut self, rx: &mut RecvBuf, max_frame: u32) -> Result<(), Error> {
        let handled = self.decode_all(rx, max_frame);
        if !self.finished.is_empty() {
            let batch = std::mem::take(&mut self.finished);
            // Blocks when the verify/write pipeline is full: backpressure
            // reaches the peer through TCP instead of growing our memory.
            self.p.pieces.send(batch).map_err(|_| Error::SessionGone)?;
            // Time spent waiting on our own pipeline is not the peer stalling.
            self.last_block = Instant::now();
        }
        handled
    }

    fn decode_all(&mut self, rx: &mut RecvBuf, max_frame: u32) -> Result<(), Error> {
        while let Some((msg, used)) = decode_frame(rx.data(), max_frame)? {
            self.on_message(msg)?;
            rx.consume(used);
        }
        rx.compact();
        Ok(())
    }

    /// Counters since the last report (and resets them).
    fn stats(&mut self) -> Event {
        Event::Stats {
            id: self.p.id,
            downloaded: self.download.take_downloaded(),
            uploaded: self.upload.take_uploaded(),
            peer_interested: self.upload.peer_interested,
            am_interested: self.am_interested,
            requests: std::mem::take(&mut self.requests),
        }
    }

    /// Blocks for `d` (a rate limit's wait) in slices, returning early
    /// when the session sends a command, so a shutdown is never held up
    /// by a slow limit; the deadline (`read_after`, `send_after`) stays,
    /// and the loop goes back to waiting once the command is handled.
    fn wait_off(&self, d: Duration) {
        let end = Instant::now() + d;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.p.commands.is_empty() {
                return;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
    }

    fn send_event(&self, e: Event) -> Result<(), Error> {
        self.p.events.send(e).map_err(|_| Error::SessionGone)
    }

    /// The session has this piece: drop our copy (cancelling what is still
    /// requested) so endgame duplicates stop costing bandwidth.
    fn on_have_cmd(&mut self, piece: PieceIndex) {
        if !self.ours.has(piece) {
            self.ours.set(piece);
            let needed = !self.needless.has(piece);
            self.needless.set(piece);
            if !self.remote.has(piece) {
                message::encode(&Message::Have(piece), &mut self.out);
            } else if needed {
                self.wanted -= 1;
                self.update_interest();
            }
        }
    }

    /// Another copy of `piece` won: cancel ours and let it go.
    fn drop_copy(&mut self, piece: PieceIndex) -> Result<(), Error> {
        if let Some(cancels) = self.download.cancel(piece, &self.p.layout) {
            for block in cancels {
                message::encode(&Message::Cancel(block), &mut self.out);
            }
            self.send_event(Event::Abandoned {
                id: self.p.id,
                piece,
            })?;
        }
        Ok(())
    }

    /// Gives back every piece we hold or were given (choked too long).
    fn abandon_all(&mut self) -> Result<(), Error> {
        let held: Vec<PieceIndex> = self
            .download
            .abandon_all()
            .into_iter()
            .chain(self.p.work.try_iter())
            .collect();
        for piece in held {
            self.send_event(Event::Abandoned {
                id: self.p.id,
                piece,
            })?;
        }
        Ok(())
    }

    /// The peer has a piece it did not have (checked by the caller).
    fn on_have(&mut self, piece: PieceIndex) -> Result<(), Error> {
        self.remote.set(piece);
        if !self.needless.has(piece) {
            self.wanted += 1;
            self.update_interest();
        }
        self.send_event(Event::Have {
            id: self.p.id,
            piece,
        })
    }

    /// Tells the peer when we start or stop wanting something it has.
    fn update_interest(&mut self) {
        let want = self.wanted > 0;
        if want != self.am_interested {
            self.am_interested = want;
            let msg = if want {
                Message::Interested
            } else {
                Message::NotInterested
            };
            message::encode(&msg, &mut self.out);
            self.stats_due = true;
        }
    }

    /// Keeps `pipeline` requests in flight, taking new pieces from the work
    /// channel as the ones we hold are fully requested.
    fn fill_pipeline(&mut self) -> Result<(), Error> {
        loop {
            let idle = self.download.in_flight() == 0;
            match self.download.next(&self.p.layout) {
                Next::Request(block) => {
                    message::encode(&Message::Request(block), &mut self.out);
                    if idle {
                        // The stall clock runs while requests are in
                        // flight; resume it where a choke paused it.
                        self.last_block = Instant::now() - std::mem::take(&mut self.stall_carry);
                    }
                }
                Next::Piece => match self.take_piece()? {
                    Some(piece) => {
                        let buf = self.p.buffers.take(self.p.layout.piece_len(piece) as usize);
                        self.download.start(piece, &self.p.layout, buf);
                    }
                    None => break,
                },
                Next::Wait => break,
            }
        }
        Ok(())
    }

    /// The next piece the session assigned us. One we no longer need (it
    /// completed elsewhere) or cannot get is handed back at once.
    fn take_piece(&mut self) -> Result<Option<PieceIndex>, Error> {
        while let Ok(piece) = self.p.work.try_recv() {
            if self.needless.has(piece) || !self.remote.has(piece) || self.download.holds(piece) {
                self.send_event(Event::Abandoned {
                    id: self.p.id,
                    piece,
                })?;
                continue;
            }
            return Ok(Some(piece));
        }
        Ok(None)
    }

    /// BEP 10 messages: the peer's extension handshake (its ids for the
    /// extensions), and `ut_metadata` requests, answered from the info
    /// dict (16 KiB a piece; a piece that does not exist is rejected).
    /// Other extensions are ignored.
    fn on_extended(&mut self, id: u8, payload: &[u8]) -> Result<(), Error> {
        let kind = ExtKind::of(id);
        if kind == Some(ExtKind::Handshake) {
            let ext = self.peer_ext.get_or_insert_with(ExtHandshake::default);
            return ext.update(payload).map_err(Error::Extension);
        }
        if kind == Some(ExtKind::Pex) {
            // BEP 11 asks for at most one message a minute; more often is
            // ignored (each costs us up to MAX_PEX_PEERS addresses).
            let now = Instant::now();
            if self.p.private
                || self
                    .last_pex
                    .is_some_and(|t| now.duration_since(t) < PEX_EVERY)
            {
                return Ok(());
            }
            self.last_pex = Some(now);
            // A malformed message is ignored (what it would have cost is
            // bounded by the rate above).
            let Ok(pex) = extension::Pex::decode(payload) else {
                return Ok(());
            };
            if !pex.added.is_empty() {
                self.send_event(Event::Pex {
                    id: self.p.id,
                    added: pex.added,
                })?;
            }
            return Ok(());
        }
        if kind != Some(ExtKind::Metadata) || !self.serves_metadata() {
            return Ok(());
        }
        // Data or rejects we never asked for, or a malformed request:
        // ignored.
        let Ok(Some(MetadataMsg::Request { piece })) = MetadataMsg::decode(payload) else {
            return Ok(());
        };
        let Some(to) = self.peer_ext.as_ref().and_then(|e| e.ut_metadata) else {
            return Ok(());
        };
        let info = Arc::clone(&self.p.info);
        let total = info.len() as u32;
        // A peer that asks faster than it reads gets rejects (about 40
        // bytes) instead of 16 KiB pieces: what a burst of requests can
        // queue here stays bounded, whatever it sends.
        let backlog = self.out.len() > MAX_METADATA_BACKLOG;
        let reply = match extension::metadata_piece_len(total, piece).filter(|_| !backlog) {
            Some(len) => {
                let at = (piece * extension::METADATA_PIECE_LEN) as usize;
                MetadataMsg::Data {
                    piece,
                    total_size: total,
                    data: &info[at..at + len as usize],
                }
                .encode()
            }
            None => MetadataMsg::Reject { piece }.encode(),
        };
        message::encode(
            &Message::Extended {
                id: to,
                payload: &reply,
            },
            &mut self.out,
        );
        Ok(())
    }

    /// Whether this connection answers `ut_metadata`: not for a private
    /// torrent, nor for an info dict larger than peers accept.
    fn serves_metadata(&self) -> bool {
        !self.p.private && self.p.info.len() <= extension::MAX_METADATA_SIZE as usize
    }

    fn on_message(&mut self, msg: Message<'_>) -> Result<(), Error> {
        match msg {
            Message::KeepAlive | Message::Port(_) | Message::Other { .. } => {}
            Message::Extended { id, payload } => self.on_extended(id, payload)?,
            Message::Choke => {
                if !self.download.is_choked() {
                    let now = Instant::now();
                    if now.duration_since(self.choke_window_start) > CHOKE_WINDOW {
                        self.choke_window_start = now;
                        self.chokes = 0;
                    }
                    self.chokes += 1;
                    if self.chokes > MAX_CHOKES {
                        return Err(Error::ChokeFlood);
                    }
                    self.choked_since = now;
                    if self.download.in_flight() > 0 {
                        self.stall_carry = self.last_block.elapsed();
                    }
                    self.download.choke();
                }
            }
            Message::Unchoke => self.download.unchoke(),
            // Interest changes go to the choker at once, not in a second.
            Message::Interested => {
                self.upload.peer_interested = true;
                self.stats_due = true;
            }
            Message::NotInterested => {
                self.upload.peer_interested = false;
                self.stats_due = true;
            }
            Message::Request(b) => {
                self.requests = self.requests.saturating_add(1);
                self.upload
                    .on_request(b, &self.p.layout, &self.ours)
                    .map_err(Error::BadRequest)?
            }
            Message::Cancel(b) => self.upload.on_cancel(b),
            Message::Have(piece) => {
                if piece.0 >= self.remote.len() {
                    return Err(Error::BadHave(piece.0));
                }
                self.got_pieces_msg = true;
                // Repeats cost nothing: only news goes to the session.
                if !self.remote.has(piece) {
                    self.on_have(piece)?;
                }
            }
            Message::Bitfield(bits) => {
                let bits = Bitfield::from_wire(bits, self.p.layout.piece_count())
                    .ok_or(Error::BadBitfield)?;
                if !self.got_pieces_msg {
                    self.got_pieces_msg = true;
                    self.wanted = bits
                        .as_bytes()
                        .iter()
                        .zip(self.needless.as_bytes())
                        .map(|(r, o)| (r & !o).count_ones())
                        .sum();
                    self.remote = bits.clone();
                    self.update_interest();
                    self.send_event(Event::Bitfield {
                        id: self.p.id,
                        bits,
                    })?;
                } else {
                    // BEP 3 wants one bitfield, first, but clients send
                    // more (aria2c does, after `have`). Later ones only
                    // add pieces, as haves: O(bytes) here, O(new pieces)
                    // for the session, however many arrive.
                    let new: Vec<PieceIndex> = bits
                        .as_bytes()
                        .iter()
                        .zip(self.remote.as_bytes())
                        .enumerate()
                        .filter(|(_, (b, r))| *b & !*r != 0)
                        .flat_map(|(i, (b, r))| {
                            let fresh = b & !r;
                            (0..8u32)
                                .filter(move |k| fresh & (0x80 >> k) != 0)
                                .map(move |k| PieceIndex(i as u32 * 8 + k))
                        })
                        .collect();
                    for piece in new {
                        self.on_have(piece)?;
                    }
                }
            }
            Message::Piece {
                piece,
                offset,
                data,
            } => self.on_block(piece, offset, data)?,
        }
        Ok(())
    }

    fn on_block(&mut self, piece: PieceIndex, offset: u32, data: &[u8]) -> Result<(), Error> {
        match self.download.on_block(piece, offset, data, &self.p.layout) {
            Ok(Received::Ignored) => {}
            Ok(Received::Stored) => self.last_block = Instant::now(),
            Ok(Received::Complete(data)) => {
                self.last_block = Instant::now();
                self.finished.push(CompletedPiece {
                    from: self.p.id,
                    piece,
                    data,
                });
            }
            Err(BlockError::Unrequested) => return Err(Error::Unrequested { piece: piece.0 }),
            Err(BlockError::OutOfRange) => {
                return Err(Error::BadBlock {
                    piece: piece.0,
                    offset,
                    len: data.len(),
                })
            }
        }
        Ok(())
    }
}

/// Connects to `addr` within the connect timeout and hands a handle on
/// the socket to `closer`, with the write timeout and, until the
/// handshake is read, the handshake timeout set. `None` if the session
/// closed the connection while it was being made.
pub(super) fn dial(
    addr: SocketAddr,
    limits: &Limits,
    closer: &super::Closer,
) -> Result<Option<TcpStream>, Error> {
    let stream = TcpStream::connect_timeout(&addr, limits.connect).map_err(Error::Connect)?;
    if !closer.attach(&stream) {
        return Ok(None);
    }
    stream
        .set_write_timeout(Some(limits.write))
        .map_err(Error::Io)?;
    stream
        .set_read_timeout(Some(limits.handshake))
        .map_err(Error::Io)?;
    Ok(Some(stream))
}

pub(super) fn read_handshake(
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<[u8; message::HANDSHAKE_LEN], Error> {
    let mut theirs = [0u8; message::HANDSHAKE_LEN];
    stream.read_exact(&mut theirs).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => Error::Closed,
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::HandshakeTimeout(timeout),
        _ => Error::Io(e),
    })?;
    Ok(theirs)
}

/// Receive buffer: bytes from `start` to `end` are undecoded. Sized to hold
/// at least one maximal frame so a frame never needs a second allocation.
pub(super) struct RecvBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    min_free: usize,
}

impl RecvBuf {
    pub(super) fn new(max_frame: usize) -> RecvBuf {
        RecvBuf {
            buf: vec![0; (256 * 1024).max(2 * max_frame)],
            start: 0,
            end: 0,
            min_free: max_frame,
        }
    }

    pub(super) fn space(&mut self) -> &mut [u8] {
        &mut self.buf[self.end..]
    }

    pub(super) fn filled(&mut self, n: usize) {
        self.end += n;
    }

    pub(super) fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub(super) fn consume(&mut self, n: usize) {
        self.start += n;
    }

    /// Moves undecoded bytes to the front when the tail could no longer hold
    /// a whole frame.
    pub(super) fn compact(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.buf.len() - self.end < self.min_free {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }
}
