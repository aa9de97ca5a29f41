//! The session thread. Owns every piece's state, the set of peer
//! connections, the verify/write pipeline and the tracker's announcer.
//! Other threads never touch this state: peers, hashers, the writer and the
//! announcer send it messages, and it answers with commands.
//!
//! Piece states (see md/DESIGN.md):
//! `Queued` (index is in the work queue) -> `InFlight` (one or more peers
//! hold it) -> `Verifying` (on the rayon pool) -> `Writing` (queued at the
//! writer) -> `Done` (verified bytes are on disk). A failed hash, a dead
//! peer or an abandoned piece sends it back to `Queued`.

use super::choker::{Candidate, Choker, RECHOKE_EVERY};
use super::{listener, Error, Event, Options, SeedUntil, Shared, Summary};
use crate::geometry::Layout;
use crate::metainfo::Torrent;
use crate::peer::message::Bitfield;
use crate::peer::{self, conn, CompletedPiece, ConnId};
use crate::storage::{self, Storage, WriteCmd};
use crate::tracker::{self, Announcer};
use crate::types::PieceIndex;
use crate::verify;
use crossbeam_channel::{bounded, never, select, unbounded, Receiver, Sender};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const TICK: Duration = Duration::from_millis(100);
/// Bytes of pieces allowed between "assembled" and "written". Bounds memory
/// independently of torrent size; 16 MiB keeps both hash threads busy.
const PIPELINE_BYTES: u64 = 16 * 1024 * 1024;
/// A peer that sent this many pieces failing their hash is dropped and its
/// address never tried again.
const MAX_HASH_FAILS: u32 = 2;
/// Connection attempts to one address before we give up on it.
const MAX_CONNECT_FAILS: u32 = 5;
/// Endgame: how often one in-flight piece may be offered to another peer.
const DUP_EVERY: Duration = Duration::from_millis(500);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Queued,
    InFlight,
    Verifying,
    Writing,
    Done,
}

struct Piece {
    state: State,
    /// Peers currently assembling this piece (more than one in endgame).
    holders: u8,
    last_dup: Option<Instant>,
}

struct PeerHandle {
    addr: SocketAddr,
    commands: Sender<peer::Command>,
    connected: bool,
    hash_fails: u32,
    /// Set when the session bans this peer; reported when it exits.
    banned: Option<String>,
    unchoked: bool,
    interested: bool,
    /// The peer connected to us: its address is an ephemeral port, not
    /// one to dial back.
    incoming: bool,
    /// Piece bytes from / to this peer since the last rechoke.
    down: u64,
    up: u64,
}

#[derive(Default)]
struct AddrInfo {
    live: bool,
    failures: u32,
    next_try: Option<Instant>,
    banned: bool,
}

struct Hashed {
    from: ConnId,
    piece: PieceIndex,
    data: Vec<u8>,
    ok: bool,
}

pub(super) struct Coordinator {
    torrent: Arc<Torrent>,
    layout: Arc<Layout>,
    opts: Options,
    pieces: Vec<Piece>,
    have: Bitfield,
    shared: Arc<Shared>,
    events: Sender<Event>,
    cancel: Receiver<()>,
    pool: rayon::ThreadPool,

    work_tx: Sender<PieceIndex>,
    work_rx: Receiver<PieceIndex>,
    peer_tx: Sender<peer::Event>,
    peer_rx: Receiver<peer::Event>,
    piece_tx: Sender<CompletedPiece>,
    piece_rx: Receiver<CompletedPiece>,
    hashed_tx: Sender<Hashed>,
    hashed_rx: Receiver<Hashed>,

    peers: HashMap<ConnId, PeerHandle>,
    addrs: HashMap<SocketAddr, AddrInfo>,
    candidates: VecDeque<SocketAddr>,
    next_conn: ConnId,
    /// Bytes assembled but not yet written (Verifying + Writing).
    pipeline_bytes: u64,
    downloaded: u64,
    connected_count: u32,
    last_peer_seen: Instant,
    last_tracker_error: Option<String>,
    rate_window: VecDeque<(Instant, u64, u64)>,
    started: Instant,
    storage: Option<Arc<Storage>>,
    choker: Choker,
    last_rechoke: Instant,
    uploaded: u64,
    completed_at: Option<Instant>,
}

impl Coordinator {
    pub(super) fn new(
        torrent: Torrent,
        opts: Options,
        cancel: Receiver<()>,
        events: Sender<Event>,
        shared: Arc<Shared>,
    ) -> Result<Coordinator, Error> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("rtc-hash-{i}"))
            .build()
            .map_err(|e| Error::Thread(e.to_string()))?;
        let n = torrent.piece_count();
        let layout = Arc::new(torrent.layout().clone());
        let (work_tx, work_rx) = unbounded();
        let (peer_tx, peer_rx) = unbounded();
        let (piece_tx, piece_rx) = bounded(2);
        let (hashed_tx, hashed_rx) = unbounded();
        let pieces = (0..n)
            .map(|_| Piece {
                state: State::Queued,
                holders: 0,
                last_dup: None,
            })
            .collect();
        Ok(Coordinator {
            torrent: Arc::new(torrent),
            layout,
            pieces,
            have: Bitfield::new(n),
            shared,
            events,
            cancel,
            pool,
            work_tx,
            work_rx,
            peer_tx,
            peer_rx,
            piece_tx,
            piece_rx,
            hashed_tx,
            hashed_rx,
            peers: HashMap::new(),
            addrs: HashMap::new(),
            candidates: VecDeque::new(),
            next_conn: 0,
            pipeline_bytes: 0,
            downloaded: 0,
            connected_count: 0,
            last_peer_seen: Instant::now(),
            last_tracker_error: None,
            rate_window: VecDeque::new(),
            started: Instant::now(),
            storage: None,
            choker: Choker::default(),
            last_rechoke: Instant::now(),
            uploaded: 0,
            completed_at: None,
            opts,
        })
    }

    pub(super) fn run(mut self) -> Result<Summary, Error> {
        let storage = Arc::new(self.resume()?);
        if self.have.is_full() && self.opts.seed == SeedUntil::Never {
            // Everything is on disk and verified: no tracker, no peers.
            let _ = self.events.try_send(Event::Finished);
            return Ok(self.summary());
        }
        self.storage = Some(Arc::clone(&storage));
        let (write_tx, write_rx) = bounded::<WriteCmd>(8);
        let (written_tx, written_rx) = unbounded();
        let writer = storage::spawn_writer(storage, write_rx, written_tx)
            .map_err(|e| Error::Thread(e.to_string()))?;

        // Listen for peers; announce the port we really got.
        let (stop_listener, listener_stop_rx) = bounded::<()>(1);
        let mut port = self.opts.port;
        let listener_thread = if self.opts.listen {
            let l = listener::bind(self.opts.port)
                .map_err(|e| Error::Thread(format!("cannot listen: {e}")))?;
            port = l.port();
            log::info!("listening on port {port}");
            let _ = self.events.try_send(Event::Listening(port));
            Some(
                listener::spawn(
                    l,
                    self.torrent.info_hash(),
                    self.opts.limits.handshake,
                    self.peer_tx.clone(),
                    listener_stop_rx,
                )
                .map_err(|e| Error::Thread(e.to_string()))?,
            )
        } else {
            None
        };

        let counters = Arc::new(tracker::Counters::default());
        let verified = self.shared.verified_bytes.load(Ordering::Relaxed);
        counters
            .left
            .store(self.torrent.total_length() - verified, Ordering::Relaxed);
        let (tracker_cmd_tx, tracker_cmd_rx) = unbounded();
        let (report_tx, report_rx) = unbounded();
        let tiers = self.torrent.trackers();
        let announcer = if tiers.is_empty() {
            None
        } else {
            let a = Announcer {
                tiers,
                info_hash: self.torrent.info_hash(),
                peer_id: self.opts.peer_id,
                port,
                counters: Arc::clone(&counters),
                timeout: self.opts.announce_timeout,
            };
            Some(
                a.spawn(tracker_cmd_rx, report_tx)
                    .map_err(|e| Error::Thread(e.to_string()))?,
            )
        };
        for addr in self.opts.peers.clone() {
            self.add_candidate(addr);
        }

        let result = self.event_loop(
            &write_tx,
            &written_rx,
            &report_rx,
            &counters,
            &tracker_cmd_tx,
        );

        // Shut down in dependency order: the listener and peers first (they
        // feed us), then the writer (drains queued writes), then the tracker
        // (`stopped`).
        drop(stop_listener);
        if let Some(l) = listener_thread {
            let _ = l.join();
        }
        for p in self.peers.values() {
            let _ = p.commands.send(peer::Command::Shutdown);
        }
        let _ = write_tx.send(WriteCmd::Shutdown);
        let _ = writer.join();
        let _ = tracker_cmd_tx.send(tracker::Command::Shutdown);
        if let Some(t) = announcer {
            // The stopped announce is bounded by its own timeout; do not
            // wait longer than that for a tracker that hangs.
            let deadline = Instant::now() + Duration::from_secs(5);
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
        self.shared.peers.store(0, Ordering::Relaxed);
        result.map(|()| self.summary())
    }

    fn summary(&self) -> Summary {
        Summary {
            uploaded_bytes: self.uploaded,
            total_bytes: self.torrent.total_length(),
            downloaded_bytes: self.downloaded,
            elapsed: self.started.elapsed(),
        }
    }

    /// Verifies what is already on disk and queues only the pieces that are
    /// missing or wrong. Nothing counts as done unless its bytes hashed
    /// correctly just now. Returns the storage opened for writing, or opened
    /// read-only when everything is already complete (to seed from).
    ///
    /// Files that exist but were not started by rtc for this torrent (no
    /// marker, see `storage::Marker`) belong to the user: if any of their
    /// pieces would have to be rewritten, the download is refused instead.
    fn resume(&mut self) -> Result<Storage, Error> {
        let dir = &self.opts.output_dir;
        let marker = storage::Marker::new(dir, &self.torrent);
        let existing = Storage::open_existing(dir, &self.torrent).map_err(Error::Storage)?;
        let have = verify::check(&self.torrent, &existing, &self.pool).map_err(Error::Storage)?;
        if !marker.exists() {
            existing
                .check_not_clobbering(&have)
                .map_err(Error::Storage)?;
        }
        let mut bytes = 0;
        for i in 0..self.torrent.piece_count() {
            let piece = PieceIndex(i);
            if have.has(piece) {
                self.pieces[i as usize].state = State::Done;
                bytes += self.layout.piece_len(piece) as u64;
            } else {
                let _ = self.work_tx.send(piece);
            }
        }
        if have.count() > 0 {
            log::info!(
                "resume: {} of {} pieces already verified on disk",
                have.count(),
                have.len()
            );
        }
        self.shared.verified_bytes.store(bytes, Ordering::Relaxed);
        self.shared
            .pieces_done
            .store(have.count(), Ordering::Relaxed);
        let _ = self.events.try_send(Event::Checked {
            pieces_ok: have.count(),
            pieces_total: have.len(),
        });
        self.have = have;
        if self.have.is_full() {
            marker.remove();
            return Ok(existing);
        }
        drop(existing);
        marker.create().map_err(Error::Storage)?;
        Storage::open(dir, &self.torrent).map_err(Error::Storage)
    }

    fn event_loop(
        &mut self,
        write_tx: &Sender<WriteCmd>,
        written_rx: &Receiver<(PieceIndex, Result<(), storage::Error>)>,
        report_rx: &Receiver<tracker::Report>,
        counters: &tracker::Counters,
        tracker_cmd: &Sender<tracker::Command>,
    ) -> Result<(), Error> {
        let never_pieces = never::<CompletedPiece>();
        let mut next_tick = Instant::now();
        // The clocks start now, not before the (possibly long) resume check.
        self.last_peer_seen = Instant::now();
        self.last_rechoke = Instant::now();
        loop {
            if self.have.is_full() && self.completed_at.is_none() {
                self.completed_at = Some(Instant::now());
                storage::Marker::new(&self.opts.output_dir, &self.torrent).remove();
                let _ = self.events.try_send(Event::Finished);
                if self.opts.seed != SeedUntil::Never {
                    log::info!("complete; seeding");
                }
            }
            if self.completed_at.is_some() && self.seeding_done() {
                return Ok(());
            }
            let room = self.pipeline_bytes < PIPELINE_BYTES;
            let pieces_rx = if room { &self.piece_rx } else { &never_pieces };
            let timeout = next_tick.saturating_duration_since(Instant::now());
            select! {
                recv(self.peer_rx) -> ev => {
                    if let Ok(ev) = ev { self.on_peer_event(ev); }
                }
                recv(pieces_rx) -> cp => {
                    if let Ok(cp) = cp { self.on_completed(cp); }
                }
                recv(self.hashed_rx) -> h => {
                    if let Ok(h) = h { self.on_hashed(h, write_tx)?; }
                }
                recv(written_rx) -> w => {
                    if let Ok((piece, result)) = w {
                        self.on_written(piece, result, counters)?;
                        // `completed` only for a download finished in this
                        // run (BEP 3), never for data that was already here.
                        if self.have.is_full() {
                            let _ = tracker_cmd.send(tracker::Command::Completed);
                        }
                    }
                }
                recv(report_rx) -> r => {
                    if let Ok(r) = r { self.on_tracker(r)?; }
                }
                recv(self.cancel) -> _ => {
                    // Stopping a seed is how seeding ends, not a failure.
                    return if self.have.is_full() { Ok(()) } else { Err(Error::Cancelled) };
                }
                default(timeout) => {}
            }
            if Instant::now() >= next_tick {
                next_tick = Instant::now() + TICK;
                self.tick(tracker_cmd)?;
                counters.uploaded.store(self.uploaded, Ordering::Relaxed);
            }
        }
    }

    /// Whether seeding has reached the user's limit (always, when not
    /// seeding at all).
    fn seeding_done(&self) -> bool {
        match self.opts.seed {
            SeedUntil::Never => true,
            SeedUntil::Stopped => false,
            SeedUntil::Ratio(r) => self.uploaded as f64 >= r * self.torrent.total_length() as f64,
            SeedUntil::Time(d) => self.completed_at.is_some_and(|t| t.elapsed() >= d),
        }
    }

    /// Runs the choker and sends the changes to the peers.
    fn rechoke(&mut self, now: Instant) {
        let elapsed = now
            .duration_since(self.last_rechoke)
            .as_secs_f64()
            .max(0.001);
        self.last_rechoke = now;
        let seeding = self.have.is_full();
        let candidates: Vec<Candidate> = self
            .peers
            .iter()
            .filter(|(_, p)| p.connected)
            .map(|(&id, p)| Candidate {
                id,
                interested: p.interested,
                rate: ((if seeding { p.up } else { p.down }) as f64 / elapsed) as u64,
            })
            .collect();
        let unchoke = self.choker.decide(&candidates, now, |n| {
            (crate::types::random_u64() % n as u64) as usize
        });
        for (id, p) in self.peers.iter_mut() {
            p.down = 0;
            p.up = 0;
            let want = unchoke.contains(id);
            if want != p.unchoked {
                p.unchoked = want;
                let cmd = if want {
                    peer::Command::Unchoke
                } else {
                    peer::Command::Choke
                };
                let _ = p.commands.send(cmd);
            }
        }
    }

    fn add_candidate(&mut self, addr: SocketAddr) {
        let info = self.addrs.entry(addr).or_default();
        if info.banned || info.live || info.failures >= MAX_CONNECT_FAILS {
            return;
        }
        if !self.candidates.contains(&addr) {
            self.candidates.push_back(addr);
        }
    }

    fn tick(&mut self, tracker_cmd: &Sender<tracker::Command>) -> Result<(), Error> {
        let now = Instant::now();
        self.connect_more(now);
        self.endgame(now);
        self.update_rate(now);
        if now.duration_since(self.last_rechoke) >= RECHOKE_EVERY {
            self.rechoke(now);
        }
        if self.connected_count > 0 || self.have.is_full() {
            self.last_peer_seen = now;
        } else {
            if self.peers.is_empty() && self.candidates.is_empty() {
                let _ = tracker_cmd.send(tracker::Command::WantPeers);
            }
            let waited = now.duration_since(self.last_peer_seen);
            if waited >= self.opts.no_peer_timeout {
                return Err(Error::NoPeers {
                    waited,
                    last_tracker_error: self.last_tracker_error.clone(),
                });
            }
        }
        Ok(())
    }

    fn connect_more(&mut self, now: Instant) {
        let mut tries = self.candidates.len();
        while self.peers.len() < self.opts.max_peers && tries > 0 {
            tries -= 1;
            let Some(addr) = self.candidates.pop_front() else {
                break;
            };
            let info = self.addrs.entry(addr).or_default();
            if info.banned || info.live {
                continue;
            }
            if info.next_try.is_some_and(|t| now < t) {
                self.candidates.push_back(addr);
                continue;
            }
            if !self.spawn_peer(addr, None) {
                self.candidates.push_back(addr);
                break;
            }
        }
    }

    /// A peer connected to us: keep it unless we are full or it is banned.
    fn accept(&mut self, inc: peer::Incoming) {
        let addr = inc.addr;
        if self.peers.len() >= self.opts.max_peers {
            log::debug!(
                "incoming {addr} refused: {} peers already",
                self.peers.len()
            );
            return;
        }
        if inc.accepted.handshake.peer_id == self.opts.peer_id {
            return; // ourselves, via a tracker that lists us
        }
        let info = self.addrs.entry(addr).or_default();
        if info.banned || info.live {
            return;
        }
        self.spawn_peer(addr, Some(inc));
    }

    /// Starts a connection thread (outgoing, or for an accepted stream).
    /// Returns false if the thread could not be started.
    fn spawn_peer(&mut self, addr: SocketAddr, incoming: Option<peer::Incoming>) -> bool {
        let is_incoming = incoming.is_some();
        let Some(storage) = self.storage.as_ref() else {
            return false;
        };
        let id = self.next_conn;
        self.next_conn += 1;
        let (cmd_tx, cmd_rx) = unbounded();
        let params = conn::Params {
            id,
            addr,
            info_hash: self.torrent.info_hash(),
            peer_id: self.opts.peer_id,
            layout: Arc::clone(&self.layout),
            have: self.have.clone(),
            work: self.work_rx.clone(),
            requeue: self.work_tx.clone(),
            events: self.peer_tx.clone(),
            pieces: self.piece_tx.clone(),
            commands: cmd_rx,
            limits: self.opts.limits.clone(),
            storage: Arc::clone(storage),
            incoming,
        };
        match conn::spawn(params) {
            Ok(_detached) => {
                self.addrs.entry(addr).or_default().live = true;
                self.peers.insert(
                    id,
                    PeerHandle {
                        addr,
                        commands: cmd_tx,
                        connected: false,
                        hash_fails: 0,
                        banned: None,
                        unchoked: false,
                        interested: false,
                        incoming: is_incoming,
                        down: 0,
                        up: 0,
                    },
                );
                true
            }
            Err(e) => {
                log::warn!("cannot start a peer thread: {e}");
                false
            }
        }
    }

    /// Endgame: when nothing is left in the queue, offer pieces that only
    /// one peer holds to the others, so one slow peer cannot hold the
    /// download at 99%. The loser's copy is cancelled by `Command::Have`.
    fn endgame(&mut self, now: Instant) {
        if !self.work_rx.is_empty() || self.connected_count < 2 {
            return;
        }
        for (i, p) in self.pieces.iter_mut().enumerate() {
            if p.state == State::InFlight
                && p.holders == 1
                && p.last_dup
                    .is_none_or(|t| now.duration_since(t) >= DUP_EVERY)
            {
                p.last_dup = Some(now);
                let _ = self.work_tx.send(PieceIndex(i as u32));
            }
        }
    }

    fn update_rate(&mut self, now: Instant) {
        let verified = self.shared.verified_bytes.load(Ordering::Relaxed);
        self.shared.uploaded.store(self.uploaded, Ordering::Relaxed);
        self.rate_window.push_back((now, verified, self.uploaded));
        while self
            .rate_window
            .front()
            .is_some_and(|(t, _, _)| now.duration_since(*t) > Duration::from_secs(5))
        {
            self.rate_window.pop_front();
        }
        if let (Some((t0, b0, u0)), Some((t1, b1, u1))) =
            (self.rate_window.front(), self.rate_window.back())
        {
            let dt = t1.duration_since(*t0).as_secs_f64();
            let per_sec = |n: u64| if dt > 0.0 { (n as f64 / dt) as u64 } else { 0 };
            self.shared.rate.store(per_sec(b1 - b0), Ordering::Relaxed);
            self.shared
                .upload_rate
                .store(per_sec(u1 - u0), Ordering::Relaxed);
        }
    }

    fn requeue(&mut self, piece: PieceIndex) {
        let p = &mut self.pieces[piece.as_usize()];
        p.state = State::Queued;
        p.last_dup = None;
        let _ = self.work_tx.send(piece);
    }

    fn release(&mut self, piece: PieceIndex) {
        let p = &mut self.pieces[piece.as_usize()];
        p.holders = p.holders.saturating_sub(1);
        if p.holders == 0 && p.state == State::InFlight {
            self.requeue(piece);
        }
    }

    fn on_peer_event(&mut self, ev: peer::Event) {
        match ev {
            peer::Event::Incoming(inc) => self.accept(*inc),
            peer::Event::Stats {
                id,
                downloaded,
                uploaded,
                peer_interested,
                ..
            } => {
                self.uploaded += uploaded;
                if let Some(p) = self.peers.get_mut(&id) {
                    p.down += downloaded;
                    p.up += uploaded;
                    let newly = peer_interested && !p.interested;
                    p.interested = peer_interested;
                    // A newly interested peer need not wait 10 s for a
                    // free slot.
                    if newly
                        && self.peers.values().filter(|p| p.unchoked).count()
                            <= super::choker::REGULAR_SLOTS
                    {
                        self.rechoke(Instant::now());
                    }
                }
            }
            peer::Event::Connected { id, .. } => {
                if let Some(p) = self.peers.get_mut(&id) {
                    p.connected = true;
                    self.connected_count += 1;
                    self.shared
                        .peers
                        .store(self.connected_count, Ordering::Relaxed);
                    if let Some(a) = self.addrs.get_mut(&p.addr) {
                        a.failures = 0;
                    }
                    log::info!("peer {} connected", p.addr);
                    let _ = self.events.try_send(Event::PeerConnected(p.addr));
                }
            }
            peer::Event::Took { piece, .. } => {
                let p = &mut self.pieces[piece.as_usize()];
                p.holders = p.holders.saturating_add(1);
                if p.state == State::Queued {
                    p.state = State::InFlight;
                }
            }
            peer::Event::Abandoned { piece, .. } => self.release(piece),
            peer::Event::Exited {
                id,
                addr,
                error,
                connected,
                abandoned,
            } => {
                for piece in abandoned {
                    self.release(piece);
                }
                let Some(handle) = self.peers.remove(&id) else {
                    return;
                };
                if handle.connected {
                    self.connected_count -= 1;
                    self.shared
                        .peers
                        .store(self.connected_count, Ordering::Relaxed);
                }
                let misbehaved = error.as_ref().is_some_and(|e| e.is_misbehaviour());
                let reason = match (&handle.banned, &error) {
                    (Some(why), _) => why.clone(),
                    (None, Some(e)) => e.to_string(),
                    (None, None) => "closed".to_string(),
                };
                if connected {
                    log::info!("peer {addr} dropped: {reason}");
                } else {
                    log::debug!("peer {addr} not reachable: {reason}");
                }
                let _ = self.events.try_send(Event::PeerDropped {
                    addr,
                    reason: reason.clone(),
                });
                let info = self.addrs.entry(addr).or_default();
                info.live = false;
                if misbehaved || handle.banned.is_some() {
                    info.banned = true;
                }
                if info.banned {
                    log::info!("peer {addr} banned: {reason}");
                    return;
                }
                if handle.incoming {
                    // Its source port will not be seen again: forget it,
                    // so a long seed's address map does not grow.
                    self.addrs.remove(&addr);
                    return;
                }
                // A peer that connected and then went away may come back;
                // one that never answered is retried with backoff.
                info.failures += 1;
                let backoff = Duration::from_secs(2u64 << info.failures.min(6));
                info.next_try = Some(Instant::now() + backoff);
                if info.failures < MAX_CONNECT_FAILS {
                    self.candidates.push_back(addr);
                }
            }
        }
    }

    fn on_completed(&mut self, cp: CompletedPiece) {
        // The peer sent `Took` for this piece before the piece itself, but on
        // another channel: handle queued events first so the holder count
        // sees them in order.
        while let Ok(ev) = self.peer_rx.try_recv() {
            self.on_peer_event(ev);
        }
        let p = &mut self.pieces[cp.piece.as_usize()];
        p.holders = p.holders.saturating_sub(1);
        if matches!(p.state, State::Verifying | State::Writing | State::Done) {
            return; // an endgame duplicate that lost the race
        }
        p.state = State::Verifying;
        let len = cp.data.len() as u64;
        self.pipeline_bytes += len;
        let expected = *self
            .torrent
            .piece_hash(cp.piece)
            .expect("piece index comes from this torrent");
        let tx = self.hashed_tx.clone();
        self.pool.spawn(move || {
            let ok = sha1_smol::Sha1::from(&cp.data).digest().bytes() == expected;
            let _ = tx.send(Hashed {
                from: cp.from,
                piece: cp.piece,
                data: cp.data,
                ok,
            });
        });
    }

    fn on_hashed(&mut self, h: Hashed, write_tx: &Sender<WriteCmd>) -> Result<(), Error> {
        let len = h.data.len() as u64;
        if h.ok {
            self.pieces[h.piece.as_usize()].state = State::Writing;
            self.downloaded += len;
            // Blocks when the writer is 8 pieces behind; the writer never
            // waits on us, so this cannot deadlock.
            write_tx
                .send(WriteCmd::Piece {
                    piece: h.piece,
                    data: h.data,
                })
                .map_err(|_| Error::Thread("writer thread ended".into()))?;
            return Ok(());
        }
        self.pipeline_bytes -= len;
        log::warn!("piece {} failed its hash check", h.piece);
        let p = &mut self.pieces[h.piece.as_usize()];
        if p.holders > 0 {
            p.state = State::InFlight;
        } else {
            self.requeue(h.piece);
        }
        if let Some(peer) = self.peers.get_mut(&h.from) {
            peer.hash_fails += 1;
            if peer.hash_fails >= MAX_HASH_FAILS && peer.banned.is_none() {
                let why = format!("sent {} pieces that failed the hash check", peer.hash_fails);
                log::warn!("peer {} {why}; dropped and banned", peer.addr);
                let _ = peer.commands.send(peer::Command::Shutdown);
                self.addrs.entry(peer.addr).or_default().banned = true;
                peer.banned = Some(why);
            }
        }
        Ok(())
    }

    fn on_written(
        &mut self,
        piece: PieceIndex,
        result: Result<(), storage::Error>,
        counters: &tracker::Counters,
    ) -> Result<(), Error> {
        result.map_err(Error::Storage)?;
        let len = self.layout.piece_len(piece) as u64;
        self.pipeline_bytes -= len;
        self.pieces[piece.as_usize()].state = State::Done;
        self.have.set(piece);
        let verified = self.shared.verified_bytes.fetch_add(len, Ordering::Relaxed) + len;
        self.shared.pieces_done.fetch_add(1, Ordering::Relaxed);
        counters
            .downloaded
            .store(self.downloaded, Ordering::Relaxed);
        counters
            .left
            .store(self.torrent.total_length() - verified, Ordering::Relaxed);
        for p in self.peers.values() {
            let _ = p.commands.send(peer::Command::Have(piece));
        }
        let _ = self.events.try_send(Event::PieceDone {
            piece: piece.0,
            progress: self.shared.snapshot(
                self.torrent.total_length(),
                self.torrent.piece_count(),
                self.started.elapsed(),
            ),
        });
        Ok(())
    }

    fn on_tracker(&mut self, r: tracker::Report) -> Result<(), Error> {
        match r {
            tracker::Report::Peers(list) => {
                log::debug!("tracker returned {} peers", list.len());
                for addr in list {
                    self.add_candidate(addr);
                }
            }
            tracker::Report::RoundFailed { error, first_round } => {
                let _ = self.events.try_send(Event::TrackerError(error.to_string()));
                self.last_tracker_error = Some(error.to_string());
                // With nothing else to go on, a tracker that fails the first
                // round is the answer: fail now rather than wait for peers
                // that cannot come.
                if self.have.is_full() {
                    return Ok(()); // seeding: the data is safe either way
                }
                if first_round && self.addrs.is_empty() {
                    return Err(Error::Tracker(error));
                }
                if matches!(error, tracker::Error::Refused { .. })
                    && self.peers.is_empty()
                    && self.candidates.is_empty()
                {
                    return Err(Error::Tracker(error));
                }
            }
        }
        Ok(())
    }
}
