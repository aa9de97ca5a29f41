//! A download's session thread. Owns the torrent's piece states (through the pure
//! `pieces` module), the address book (`addrbook`), the set of peer
//! connections and their slots (`slots`), choking (`choker`), the
//! verify/write pipeline and the tracker's announcer. Other threads never
//! touch this state: peers, hashers, the writer and the announcer send it
//! messages, and it answers with commands. Decisions live in those pure
//! modules; this file moves messages between them and the threads.
//!
//! Work reaches a peer through that peer's own crossbeam channel: the
//! session assigns pieces (rarest first) up to the peer's quota and the
//! connection thread pulls them. A peer with nothing it can do is *hungry*
//! and costs nothing until something changes for it: its bitfield or a
//! `have`, a piece going back to the queue, endgame, or an unchoke.

use super::addrbook::{worth_dialling, AddressBook, Origin, Outcome};
use super::choker::{self, Candidate, Choker, RECHOKE_EVERY};
use super::core::{Core, Permit};
use super::pieces::{Pick, Pieces};
use super::rate::Rates;
use super::slots::{self, SlotPeer};
use super::{AddOptions, Control, Error, Event, PeerSources, SeedUntil, Shared, Summary};
use crate::geometry::Layout;
use crate::metainfo::Torrent;
use crate::peer::message::{Bitfield, Handshake};
use crate::peer::{self, conn, Closer, CompletedPiece, ConnId};
use crate::storage::{self, Storage, WriteCmd};
use crate::tracker::{self, Announcer};
use crate::types::{PeerId, PieceIndex, Rng};
use crate::verify;
use crossbeam_channel::{bounded, never, select, unbounded, Receiver, Sender};
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TICK: Duration = Duration::from_millis(100);
/// Longest timeout honoured; longer ones are this (an `Instant` plus
/// `Duration::MAX` overflows).
const LONGEST: Duration = Duration::from_secs(365 * 86_400);
/// New addresses a download takes from peer exchange per minute, from
/// all peers together.
const PEX_PER_MINUTE: usize = 100;

/// Our peer exchange view goes out this often (BEP 11: at most once a
/// minute).
const PEX_EVERY: Duration = Duration::from_secs(60);
/// Rates shown in progress are averaged over this long.
const RATE_WINDOW: Duration = Duration::from_secs(5);
/// Bytes of one download's pieces allowed between "assembled" and
/// "written" (the session's total is `core::PIPELINE_BYTES`). Bounds
/// memory independently of torrent size. 6 MiB keeps the hashing threads
/// and the writer busy at loopback speed (1 GiB: the same 340-390 MiB/s
/// as 16 MiB, peak RSS 16 MiB instead of 23; md/benchmarks.md).
const PIPELINE_BYTES: u64 = 6 * 1024 * 1024;
/// A peer that sent this many pieces failing their hash is dropped and its
/// address never tried again.
const MAX_HASH_FAILS: u32 = 2;
/// Bytes of small pieces hashed by one pool job: a 16 KiB piece alone is
/// a job of about 10 µs, less than waking a pool thread costs.
const HASH_JOB_BYTES: u64 = 256 * 1024;
/// How long an ending download waits for its hash jobs' writes (the
/// writer answers in milliseconds unless the disk hangs).
const JOBS_GRACE: Duration = Duration::from_secs(30);
/// A peer holding pieces that completes none for this long is snubbed: it
/// keeps one piece at a time, and endgame copies what it holds.
const SNUB_AFTER: Duration = Duration::from_secs(60);
/// Least time between rechokes triggered by a peer becoming interested.
const RECHOKE_SOON: Duration = Duration::from_secs(1);
/// A connection thread that has sent no stats for this long is stuck
/// writing to a peer that does not read: its unchoke is taken back. (Long
/// enough for a slow reader to drain one loop turn's 1 MiB at 100 KB/s.)
const STUCK_AFTER: Duration = Duration::from_secs(10);
/// Pieces a peer may hold before its rate is known.
const FIRST_QUOTA: usize = 4;
/// Pieces assigned beyond what a connection works on at once: ready in its
/// channel the moment one completes.
const SPARE_PIECES: usize = 2;
/// A peer may hold the pieces it fetches in this many seconds at its rate.
const QUOTA_SECS: u64 = 4;
/// At most one useless peer is evicted per this interval for a candidate
/// we want to dial (incoming peers evict at once).
const EVICT_EVERY: Duration = Duration::from_secs(1);

struct PeerHandle {
    addr: SocketAddr,
    commands: Sender<peer::Command>,
    /// Closes its socket however its thread is blocked.
    closer: Closer,
    work: Sender<PieceIndex>,
    /// The peer connected to us: its address is an ephemeral port, not
    /// one to dial back.
    incoming: bool,
    /// When the handshake completed.
    connected_at: Option<Instant>,
    /// The session asked it to go (evicted, banned or shutdown); it no
    /// longer counts against the caps.
    leaving: bool,
    /// Closed by a pause: its address is dialled again on resume.
    paused_out: bool,
    hash_fails: u32,
    /// Set when the session bans this peer; reported when it exits.
    banned: Option<String>,

    /// The peer's pieces as it told us (bitfield and haves), counted in
    /// the picker's availability.
    bits: Bitfield,
    /// Pieces assigned to it and not yet let go of.
    assigned: Vec<PieceIndex>,
    /// Those of them assigned before it had delivered anything (weak
    /// holds, see `Pieces::assign`).
    weak: Vec<PieceIndex>,
    choking_us: bool,
    /// Below its quota with nothing it can do.
    hungry: bool,
    /// `Pieces::version` when it went hungry: an unchoke with nothing new
    /// queued since need not look again.
    hungry_at: u64,
    /// Piece bytes it delivered since its last stats report.
    delivered_bytes_now: u64,
    /// Pieces it delivered on this connection.
    delivered: u32,
    /// Piece bytes moved either way on this connection.
    payload: u64,
    /// Last delivered piece, or when it began holding pieces.
    last_progress: Instant,
    snubbed: bool,

    am_interested: bool,
    peer_interested: bool,
    last_payload: Instant,
    unchoked: bool,
    unchoked_at: Option<Instant>,
    last_request: Option<Instant>,
    penalized_until: Option<Instant>,
    interested_since: Option<Instant>,
    /// Its last stats report: a connection thread blocked writing to a
    /// peer that does not read reports nothing.
    last_stats: Instant,
    /// Piece bytes from / to this peer since the last rechoke.
    down: u64,
    up: u64,
    /// Piece bytes from it in its last stats report (about a second).
    recent_down: u64,
}

impl PeerHandle {
    fn connected(&self) -> bool {
        self.connected_at.is_some()
    }

    /// Forgets `piece` as a weak hold; returns whether the hold was strong.
    fn let_go_weak(&mut self, piece: PieceIndex) -> bool {
        match self.weak.iter().position(|&x| x == piece) {
            Some(at) => {
                self.weak.swap_remove(at);
                false
            }
            None => true,
        }
    }
}

/// A hash job's word to its download besides the pieces it passed: those
/// go straight to the writer, whose answer ends the job.
enum HashNote {
    /// `piece`, from `from`, failed its check; its `len` bytes are freed.
    Failed {
        from: ConnId,
        piece: PieceIndex,
        len: u64,
    },
    /// The writer is gone: the job ended without writing.
    WriterGone,
}

pub(super) struct Coordinator {
    torrent: Arc<Torrent>,
    /// The info dict, served to peers (BEP 9).
    info: Arc<[u8]>,
    layout: Arc<Layout>,
    opts: AddOptions,
    /// What the session's torrents share (hashing pool, budgets, port).
    core: Arc<Core>,
    peer_id: PeerId,
    pieces: Pieces,
    have: Bitfield,
    /// One flag per file: selected for download.
    selected: Arc<[bool]>,
    /// Per file: made or taken by this unfinished download (see
    /// `storage::Marker::owned`).
    owned: Vec<bool>,
    /// Pieces holding bytes of a selected file.
    wanted: Bitfield,
    /// The other pieces, given to connections (which are not interested in
    /// them); `None` when every file is selected.
    unwanted: Option<Arc<Bitfield>>,
    shared: Arc<Shared>,
    events: super::EventSender,
    control: Receiver<Control>,
    /// Set with every cancel, for the one long step that does not read
    /// `control`: the check of data already on disk.
    cancelled: Arc<AtomicBool>,
    paused: bool,
    /// Candidates wait, but the session's connection budget is used up.
    starved: bool,
    rng: Rng,
    /// Every connection thread started and not yet joined.
    /// Each connection thread with its unit of the session's connection
    /// budget, given back only once the thread is joined: a new
    /// connection never overlaps the end of an old one's thread.
    threads: Vec<(std::thread::JoinHandle<()>, Permit)>,

    peer_tx: Sender<peer::Event>,
    peer_rx: Receiver<peer::Event>,
    piece_tx: Sender<Vec<CompletedPiece>>,
    piece_rx: Receiver<Vec<CompletedPiece>>,
    hashed_tx: Sender<HashNote>,
    hashed_rx: Receiver<HashNote>,
    /// Hash jobs not yet answered by the writer (or by `WriterGone`).
    jobs: usize,
    written_tx: Sender<storage::Written>,
    written_rx: Receiver<storage::Written>,

    peers: HashMap<ConnId, PeerHandle>,
    book: AddressBook,
    next_conn: ConnId,
    /// Pieces a fully working connection holds at once (working on, and
    /// spares in its channel).
    max_quota: usize,
    /// Bytes assembled but not yet written (Verifying + Writing).
    pipeline_bytes: u64,
    downloaded: u64,
    connected_count: u32,
    last_peer_seen: Instant,
    last_tracker_error: Option<String>,
    rates: Rates,
    started: Instant,
    storage: Option<Arc<Storage>>,
    choker: Choker,
    last_rechoke: Instant,
    rechoke_due: bool,
    /// Rechoke once `RECHOKE_SOON` has passed since the last one (a peer
    /// became interested): soon, but never so often that the rates the
    /// choker ranks by are measured over a sliver of time.
    rechoke_soon: bool,
    /// Pieces written since the last tick, for the batched `Have`.
    pending_haves: Vec<PieceIndex>,
    last_evict: Option<Instant>,
    /// Peer exchange: addresses we last told peers of, when, and how many
    /// new addresses peers told us of.
    pex_sent: std::collections::HashSet<SocketAddr>,
    last_pex: Instant,
    /// Addresses taken from PEX in the minute since `pex_window`.
    pex_window: Instant,
    pex_taken: usize,
    from_pex: usize,
    /// Peers that completed a handshake, by where we heard of them.
    sources: PeerSources,
    /// See `add_peers`.
    initial: Vec<(SocketAddr, Origin)>,
    uploaded: u64,
    completed_at: Option<Instant>,
    /// DHT lookups for this torrent (none for a private one, or with the
    /// session's DHT off).
    dht: Option<crate::dht::Registration>,
}

/// What a download's session thread is given by `Session::add`, whatever
/// it starts from (a torrent, or a magnet whose metadata comes first).
pub(super) struct Context {
    pub(super) core: Arc<Core>,
    pub(super) control: Receiver<Control>,
    /// Set with every cancel (see `Coordinator::cancelled`).
    pub(super) cancelled: Arc<AtomicBool>,
    pub(super) events: super::EventSender,
    pub(super) shared: Arc<Shared>,
    /// The channel connections and the listener (through the router)
    /// report on.
    pub(super) peer_tx: Sender<peer::Event>,
    pub(super) peer_rx: Receiver<peer::Event>,
    /// When the download was added (a magnet's metadata phase counts).
    pub(super) added: Instant,
}

/// `opts` with every public field made safe to use: whatever a caller
/// set, no deadline may overflow and no socket timeout may be zero.
pub(super) fn sane(mut opts: AddOptions) -> AddOptions {
    opts.limits = opts.limits.sane();
    opts.announce_timeout = opts
        .announce_timeout
        .clamp(Duration::from_millis(1), LONGEST);
    opts.no_peer_timeout = opts.no_peer_timeout.min(LONGEST);
    opts.max_peers = opts.max_peers.max(1);
    opts
}

impl Coordinator {
    pub(super) fn new(
        torrent: Torrent,
        opts: AddOptions,
        ctx: Context,
    ) -> Result<Coordinator, Error> {
        let Context {
            core,
            control,
            cancelled,
            events,
            shared,
            peer_tx,
            peer_rx,
            added,
        } = ctx;
        let opts = sane(opts);
        let n = torrent.piece_count();
        let selected: Arc<[bool]> = opts
            .files
            .resolve(&torrent)
            .map_err(Error::Selection)?
            .into();
        let wanted = crate::select::wanted_pieces(torrent.layout(), &selected);
        let unwanted = (!wanted.is_full()).then(|| {
            let mut bits = Bitfield::new(n);
            for p in (0..n).map(PieceIndex).filter(|&p| !wanted.has(p)) {
                bits.set(p);
            }
            Arc::new(bits)
        });
        let wanted_bytes = (0..n)
            .map(PieceIndex)
            .filter(|&p| wanted.has(p))
            .map(|p| u64::from(torrent.layout().piece_len(p)))
            .sum();
        shared
            .total_bytes
            .store(torrent.total_length(), Ordering::Relaxed);
        shared.wanted_bytes.store(wanted_bytes, Ordering::Relaxed);
        shared.pieces_total.store(n, Ordering::Relaxed);
        shared.init_have(n);
        let _ = shared.selected.set(Arc::clone(&selected));
        let torrent = Arc::new(torrent);
        let _ = shared.torrent.set(Arc::clone(&torrent));
        let layout = Arc::new(torrent.layout().clone());
        let (piece_tx, piece_rx) = bounded(2);
        let (hashed_tx, hashed_rx) = unbounded();
        let (written_tx, written_rx) = unbounded();
        // What the connection works on at once, plus spares waiting in its
        // channel so it never idles while the session refills it.
        let max_quota = layout.pieces_for_pipeline(opts.limits.pipeline) + SPARE_PIECES;
        Ok(Coordinator {
            info: torrent.info_shared(),
            torrent,
            layout,
            peer_id: core.peer_id,
            core,
            paused: opts.paused,
            starved: false,
            threads: Vec::new(),
            // Replaced by `resume` once the data on disk is checked.
            pieces: Pieces::new(&Bitfield::new(n), &wanted, Rng::new(0)),
            have: Bitfield::new(n),
            selected,
            owned: Vec::new(),
            wanted,
            unwanted,
            shared,
            events,
            control,
            cancelled,
            rng: Rng::seeded()?,
            peer_tx,
            peer_rx,
            piece_tx,
            piece_rx,
            hashed_tx,
            hashed_rx,
            jobs: 0,
            written_tx,
            written_rx,
            peers: HashMap::new(),
            book: AddressBook::default(),
            next_conn: 0,
            max_quota,
            pipeline_bytes: 0,
            downloaded: 0,
            connected_count: 0,
            last_peer_seen: Instant::now(),
            last_tracker_error: None,
            rates: Rates::new(RATE_WINDOW),
            started: added,
            storage: None,
            choker: Choker::default(),
            last_rechoke: Instant::now(),
            rechoke_due: false,
            rechoke_soon: false,
            pending_haves: Vec::new(),
            last_evict: None,
            pex_sent: Default::default(),
            last_pex: Instant::now(),
            pex_window: Instant::now(),
            pex_taken: 0,
            from_pex: 0,
            sources: PeerSources::default(),
            initial: Vec::new(),
            uploaded: 0,
            completed_at: None,
            dht: None,
            opts,
        })
    }

    pub(super) fn run(mut self) -> Result<Summary, Error> {
        let storage = Arc::new(self.resume()?);
        if self.pieces.is_complete() && self.opts.seed == SeedUntil::Never {
            // Everything is on disk and verified: no tracker, no peers.
            let _ = self.events.try_send(Event::Finished);
            return Ok(self.summary());
        }
        self.storage = Some(Arc::clone(&storage));
        let write_tx = self.core.writer.clone();

        let port = self.core.port.unwrap_or(0);
        if let Some(p) = self.core.port {
            let _ = self.events.try_send(Event::Listening(p));
        }

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
                peer_id: self.peer_id,
                port,
                counters: Arc::clone(&counters),
                timeout: self.opts.announce_timeout,
                paused: self.paused,
            };
            Some(
                a.spawn(tracker_cmd_rx, report_tx)
                    .map_err(|e| Error::Thread(e.to_string()))?,
            )
        };
        // BEP 27: a private torrent's peers come from its trackers only.
        if !self.torrent.private() {
            if let Some(dht) = &self.core.dht {
                self.dht = Some(dht.register(self.torrent.info_hash(), self.core.port));
                dht.add_nodes(self.torrent.dht_nodes().iter().map(String::as_str));
            }
        }
        for addr in self.opts.peers.clone() {
            self.book.add(addr, Origin::Manual);
        }
        for (addr, origin) in std::mem::take(&mut self.initial) {
            self.book.add(addr, origin);
        }

        let result = self.event_loop(
            &write_tx,
            &self.written_rx.clone(),
            &report_rx,
            &counters,
            &tracker_cmd_tx,
        );

        // Shut down in dependency order: peers first (they feed us), then
        // the writer (drains queued writes), then the tracker (`stopped`).
        // Each is joined: when this returns, no thread of the download is
        // left and every file and socket is closed.
        let _ = tracker_cmd_tx.send(tracker::Command::Shutdown);
        if let Some((_, stopper)) = &announcer {
            if stopper.busy() {
                stopper.abort(); // an ordinary announce: worthless now
            }
        }
        self.close_all_peers();
        // Pieces being verified are written before the download ends.
        self.finish_jobs(&counters);
        if let Some((t, stopper)) = announcer {
            // The `stopped` announce gets its short timeout, no more.
            let deadline = Instant::now() + tracker::STOPPED_TIMEOUT + Duration::from_millis(200);
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            stopper.abort();
            let _ = t.join();
        }
        self.storage = None;
        self.shared.peers.store(0, Ordering::Relaxed);
        result.map(|()| self.summary())
    }

    /// Asks every connection to close, shuts their sockets, and joins
    /// every connection thread. A thread still dialling ends within the
    /// connect timeout; every other one at once.
    fn close_all_peers(&mut self) {
        for p in self.peers.values_mut() {
            let _ = p.commands.send(peer::Command::Shutdown);
            p.closer.close();
            p.leaving = true;
        }
        // Their channels are drained meanwhile: a thread blocked handing
        // over a piece (a bounded channel) must not wait for us forever.
        let threads = std::mem::take(&mut self.threads);
        loop {
            let running = threads.iter().any(|(t, _)| !t.is_finished());
            select! {
                recv(self.piece_rx) -> _ => {}
                recv(self.peer_rx) -> ev => match ev {
                    Ok(peer::Event::Incoming(_)) => {} // dropped: closes it
                    // Their last events (Exited) release what they held.
                    Ok(ev) => self.on_peer_event(ev),
                    Err(_) => {}
                },
                default(Duration::from_millis(if running { 5 } else { 0 })) => {
                    if !running {
                        break;
                    }
                }
            }
        }
        for (t, permit) in threads {
            let _ = t.join();
            drop(permit);
        }
    }

    fn summary(&self) -> Summary {
        Summary {
            uploaded_bytes: self.uploaded,
            total_bytes: self.torrent.total_length(),
            downloaded_bytes: self.downloaded,
            elapsed: self.started.elapsed(),
            peer_sources: self.sources,
        }
    }

    /// Addresses learned before the download proper began (a magnet's
    /// metadata phase), with where each came from.
    pub(super) fn add_peers(&mut self, list: Vec<(SocketAddr, Origin)>, banned: &[SocketAddr]) {
        for &a in banned {
            self.book.ban(a);
        }
        self.initial = list;
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
        let files = &self.core.files;
        let existing = Storage::open_existing(dir, &self.torrent, &self.selected, files)
            .map_err(Error::Storage)?;
        let verify::Checked { have, moved } =
            verify::check(&self.torrent, &existing, &self.core.pool, &|| {
                self.cancelled.load(Ordering::Relaxed)
            })
            .map_err(Error::Storage)?;
        if self.cancelled.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        // Files an unfinished download of this torrent made are its own;
        // any other file with data must verify where it would be written.
        self.owned = marker.owned(self.selected.len());
        existing
            .check_not_clobbering(&have, self.opts.repair, &self.owned)
            .map_err(Error::Storage)?;
        let (mut bytes, mut wanted_bytes) = (0, 0);
        for i in 0..self.torrent.piece_count() {
            let piece = PieceIndex(i);
            if have.has(piece) {
                bytes += self.layout.piece_len(piece) as u64;
                if self.wanted.has(piece) {
                    wanted_bytes += self.layout.piece_len(piece) as u64;
                }
            }
        }
        self.pieces = Pieces::new(&have, &self.wanted, Rng::seeded()?);
        // Always said: scripts and tests know from it that the session is
        // past its check of the disk (the port is open before it).
        log::info!(
            "resume: {} of {} pieces already verified on disk",
            have.count(),
            have.len()
        );
        self.shared.verified_bytes.store(bytes, Ordering::Relaxed);
        self.shared
            .wanted_verified_bytes
            .store(wanted_bytes, Ordering::Relaxed);
        self.shared
            .pieces_done
            .store(have.count(), Ordering::Relaxed);
        let _ = self.events.try_send(Event::Checked {
            pieces_ok: have.count(),
            pieces_total: have.len(),
        });
        for piece in (0..have.len()).filter(|&p| have.has(PieceIndex(p))) {
            self.shared.set_have(piece);
        }
        self.have = have;
        let complete = self.pieces.is_complete();
        if complete && moved.is_empty() {
            // Nothing to write but the selected empty files, if missing:
            // read-only data can be seeded as it is.
            Storage::create_empty_files(dir, &self.torrent, &self.selected)
                .map_err(Error::Storage)?;
            self.tidy_up();
            return Ok(existing);
        }
        if !complete {
            marker
                .create(self.torrent.info_bytes())
                .map_err(Error::Storage)?;
            // This run's selected files are its own from now on (made
            // here, or checked above).
            for (o, &s) in self.owned.iter_mut().zip(self.selected.iter()) {
                *o |= s;
            }
            marker.set_owned(&self.owned).map_err(Error::Storage)?;
        }
        // Pieces verified with bytes where an earlier selection kept them
        // (a file selected now, its bytes in the part file; a file no
        // longer selected, still on disk) go where this selection keeps
        // them, so that serving and the next check find them there.
        let move_all = || -> Result<Storage, storage::Error> {
            let storage = Storage::open(dir, &self.torrent, &self.selected, files)?;
            storage.fit_owned(&self.owned)?;
            let mut buf = Vec::new();
            for &(piece, alts) in &moved {
                if existing.read_piece_alt(piece, &mut buf, alts)? {
                    storage.write_moved(piece, &buf)?;
                }
            }
            Ok(storage)
        };
        match move_all() {
            Ok(storage) => {
                if !moved.is_empty() {
                    log::info!(
                        "resume: {} pieces moved to this selection's files",
                        moved.len()
                    );
                }
                if complete {
                    self.tidy_up();
                }
                Ok(storage)
            }
            // Complete data in a directory rtc cannot write (seeding from
            // read-only media): served from where the bytes are.
            Err(e) if complete => {
                log::info!("resume: shared pieces served where they are ({e})");
                self.tidy_up();
                Ok(existing.with_alt_reads(moved))
            }
            Err(e) => Err(Error::Storage(e)),
        }
    }

    /// Every wanted piece is here: the marker goes (the files are the
    /// user's now). The part file goes too when every file was selected;
    /// with a partial selection it stays, holding the bytes of unselected
    /// files that share a piece with a selected one, for serving those
    /// pieces and for a later run that selects more.
    ///
    /// Except: files this download owns (an earlier run selected them)
    /// that this run did not select and that are on disk may be
    /// unfinished: the marker stays, so a later run may still complete
    /// them.
    fn tidy_up(&self) {
        let dir = &self.opts.output_dir;
        let all = self.selected.iter().all(|&s| s);
        let unfinished_others = !all
            && self.torrent.files().iter().enumerate().any(|(i, f)| {
                !self.selected[i]
                    && self.owned.get(i).copied().unwrap_or(false)
                    && std::fs::symlink_metadata(dir.join(f.path()))
                        .is_ok_and(|m| m.is_file() && m.len() > 0)
            });
        if !unfinished_others {
            storage::Marker::new(dir, &self.torrent).remove();
        }
        if all {
            let _ = std::fs::remove_file(storage::part_path(dir, &self.torrent.info_hash()));
        }
    }

    fn event_loop(
        &mut self,
        write_tx: &Sender<WriteCmd>,
        written_rx: &Receiver<storage::Written>,
        report_rx: &Receiver<tracker::Report>,
        counters: &tracker::Counters,
        tracker_cmd: &Sender<tracker::Command>,
    ) -> Result<(), Error> {
        let never_pieces = never::<Vec<CompletedPiece>>();
        let dht_rx = self.dht.as_ref().map_or_else(never, |r| r.peers.clone());
        // Once the announcer has ended (it never should before we tell
        // it), its channel is replaced by one that never fires, so a
        // disconnected channel cannot make this loop spin.
        let mut reports = report_rx.clone();
        let mut next_tick = Instant::now();
        // The clocks start now, not before the (possibly long) resume check.
        self.last_peer_seen = Instant::now();
        self.last_rechoke = Instant::now();
        loop {
            if self.pieces.is_complete() && self.completed_at.is_none() {
                self.completed_at = Some(Instant::now());
                self.tidy_up();
                let _ = self.events.try_send(Event::Finished);
                if self.opts.seed != SeedUntil::Never {
                    log::info!("complete; seeding");
                }
            }
            if self.completed_at.is_some() && self.seeding_done() {
                return Ok(());
            }
            // A download's own cap, and the session's across downloads; a
            // download with nothing in flight may always take one piece,
            // so none waits on another forever.
            let session_room =
                self.core.pipeline.load(Ordering::Relaxed) < super::core::PIPELINE_BYTES;
            let room =
                self.pipeline_bytes == 0 || (self.pipeline_bytes < PIPELINE_BYTES && session_room);
            let pieces_rx = if room { &self.piece_rx } else { &never_pieces };
            let timeout = next_tick.saturating_duration_since(Instant::now());
            select! {
                recv(self.peer_rx) -> ev => {
                    if let Ok(ev) = ev { self.on_peer_event(ev); }
                }
                recv(pieces_rx) -> batch => {
                    if let Ok(batch) = batch { self.on_completed(batch, write_tx); }
                }
                recv(self.hashed_rx) -> h => {
                    if let Ok(h) = h { self.on_hash_note(h)?; }
                }
                recv(written_rx) -> w => {
                    if let Ok(batch) = w {
                        self.jobs = self.jobs.saturating_sub(1);
                        for (piece, result) in batch {
                            self.on_written(piece, result, counters)?;
                        }
                        // `completed` only for a download finished in this
                        // run (BEP 3), never for data that was already here,
                        // and only once every piece is here (a partial
                        // selection done is not a completed download).
                        if self.pieces.is_complete() && self.have.is_full() {
                            let _ = tracker_cmd.send(tracker::Command::Completed);
                        }
                    }
                }
                recv(reports) -> r => {
                    match r {
                        Ok(r) => self.on_tracker(r)?,
                        Err(_) => reports = never(),
                    }
                }
                recv(dht_rx) -> r => {
                    if let Ok(list) = r {
                        log::debug!("dht returned {} peers", list.len());
                        for addr in list {
                            self.book.add(addr, Origin::Dht);
                        }
                        // Dial now, not at the next tick.
                        if !self.paused {
                            self.connect_more(Instant::now());
                        }
                    }
                }
                recv(self.control) -> c => {
                    match c {
                        Ok(Control::Pause) => self.pause(tracker_cmd),
                        Ok(Control::Resume) => self.resume_peers(tracker_cmd),
                        // Cancelled, or every handle dropped. Stopping a
                        // seed is how seeding ends, not a failure.
                        Ok(Control::Cancel) | Err(_) => {
                            return if self.pieces.is_complete() {
                                Ok(())
                            } else {
                                Err(Error::Cancelled)
                            };
                        }
                    }
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

    /// Closes every connection and stops announcing; nothing connects
    /// until resumed.
    fn pause(&mut self, tracker_cmd: &Sender<tracker::Command>) {
        if self.paused {
            return;
        }
        self.paused = true;
        self.shared.paused.store(true, Ordering::Relaxed);
        let _ = tracker_cmd.send(tracker::Command::Pause);
        for p in self.peers.values_mut() {
            let _ = p.commands.send(peer::Command::Shutdown);
            p.closer.close();
            p.leaving = true;
            p.paused_out = true;
        }
        log::info!("paused");
        let _ = self.events.try_send(Event::Paused);
    }

    fn resume_peers(&mut self, tracker_cmd: &Sender<tracker::Command>) {
        if !self.paused {
            return;
        }
        self.paused = false;
        self.shared.paused.store(false, Ordering::Relaxed);
        self.last_peer_seen = Instant::now();
        let _ = tracker_cmd.send(tracker::Command::Resume);
        log::info!("resumed");
        let _ = self.events.try_send(Event::Resumed);
    }

    /// Whether seeding has reached the user's limit (always, when not
    /// seeding at all).
    fn seeding_done(&self) -> bool {
        match self.opts.seed {
            SeedUntil::Never => true,
            SeedUntil::Stopped => false,
            // A ratio that is not a number ends seeding at once.
            // Of what this download holds: with a partial selection, the
            // bytes of the pieces it wanted, not the whole torrent.
            SeedUntil::Ratio(r) => {
                let size = self.shared.wanted_bytes.load(Ordering::Relaxed);
                r.is_nan() || self.uploaded as f64 >= r * size as f64
            }
            SeedUntil::Time(d) => self.completed_at.is_some_and(|t| t.elapsed() >= d),
        }
    }

    /// Runs the choker and sends the changes to the peers.
    fn rechoke(&mut self, now: Instant) {
        self.rechoke_due = false;
        self.rechoke_soon = false;
        let elapsed = now
            .duration_since(self.last_rechoke)
            .as_secs_f64()
            .max(0.001);
        self.last_rechoke = now;
        let seeding = self.pieces.is_complete();
        let candidates: Vec<Candidate> = self
            .peers
            .iter()
            .filter(|(_, p)| p.connected() && !p.leaving)
            .map(|(&id, p)| Candidate {
                id,
                interested: p.peer_interested,
                rate: ((if seeding { p.up } else { p.down }) as f64 / elapsed) as u64,
                last_unchoked: p.unchoked_at,
                newcomer: p
                    .connected_at
                    .is_some_and(|t| now.duration_since(t) < choker::NEWCOMER),
                penalized: p.penalized_until.is_some_and(|t| now < t),
                interested_since: p.interested_since,
            })
            .collect();
        let unchoke = self.choker.decide(&candidates, now, &mut self.rng);
        for (id, p) in self.peers.iter_mut() {
            p.down = 0;
            p.up = 0;
            let want = unchoke.contains(id);
            if want != p.unchoked {
                p.unchoked = want;
                if want {
                    p.unchoked_at = Some(now);
                }
                let cmd = if want {
                    peer::Command::Unchoke
                } else {
                    peer::Command::Choke
                };
                let _ = p.commands.send(cmd);
            }
        }
    }

    /// Chokes peers that took an unchoke and asked for nothing, or whose
    /// connection thread has been stuck writing to them (they do not read),
    /// so idle "interested" peers cannot sit on the upload slots. Also
    /// rechokes when a waiting newcomer may take the optimistic slot.
    fn take_back_wasted_unchokes(&mut self, now: Instant) {
        let mut newcomer_waiting = false;
        for p in self.peers.values_mut() {
            let wasted = p
                .unchoked_at
                .is_some_and(|t| choker::wasted_unchoke(t, p.last_request, now));
            let stuck = now.duration_since(p.last_stats) >= STUCK_AFTER;
            if p.unchoked && (wasted || stuck) {
                log::debug!(
                    "peer {} {} while unchoked; choked",
                    p.addr,
                    if stuck {
                        "takes no data"
                    } else {
                        "asked for nothing"
                    }
                );
                p.unchoked = false;
                p.penalized_until = Some(now + choker::PENALTY);
                let _ = p.commands.send(peer::Command::Choke);
                self.rechoke_due = true;
            }
            // As the choker counts newcomers, so that a rechoke here always
            // changes something.
            newcomer_waiting |= p.peer_interested
                && p.unchoked_at.is_none()
                && !p.leaving
                && p.connected_at
                    .is_some_and(|t| now.duration_since(t) < choker::NEWCOMER);
        }
        if newcomer_waiting && self.choker.newcomer_may_preempt(now) {
            self.rechoke_due = true;
        }
    }

    fn tick(&mut self, tracker_cmd: &Sender<tracker::Command>) -> Result<(), Error> {
        let now = Instant::now();
        if !self.pending_haves.is_empty() {
            let batch: Arc<[PieceIndex]> = std::mem::take(&mut self.pending_haves).into();
            for p in self.peers.values() {
                let _ = p.commands.send(peer::Command::Have(Arc::clone(&batch)));
            }
        }
        // Ended connection threads are joined, then their budget unit
        // returns (see `threads`).
        let (ended, running): (Vec<_>, Vec<_>) = std::mem::take(&mut self.threads)
            .into_iter()
            .partition(|(t, _)| t.is_finished());
        self.threads = running;
        for (t, permit) in ended {
            let _ = t.join();
            drop(permit);
        }
        if !self.torrent.private() && now.duration_since(self.last_pex) >= PEX_EVERY {
            self.last_pex = now;
            self.send_pex();
        }
        if !self.paused {
            self.connect_more(now);
        }
        self.update_snubs(now);
        if self.pieces.in_endgame() && !self.pieces.is_complete() {
            self.feed_hungry(None, now);
        }
        self.update_rate(now);
        self.take_back_wasted_unchokes(now);
        let since = now.duration_since(self.last_rechoke);
        if self.rechoke_soon && since >= RECHOKE_SOON {
            self.rechoke_due = true;
        }
        if self.rechoke_due || since >= RECHOKE_EVERY {
            self.rechoke(now);
        }
        // Waiting for the session's connection budget (other torrents use
        // it) is not a lack of peers.
        if self.connected_count > 0 || self.pieces.is_complete() || self.paused || self.starved {
            self.last_peer_seen = now;
        } else {
            if self.peers.is_empty() && self.book.candidates() == 0 {
                let _ = tracker_cmd.send(tracker::Command::WantPeers);
                if let Some(d) = &self.dht {
                    d.want_peers();
                }
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

    /// Tells every peer (that speaks `ut_pex`) the peers we connected to
    /// and lost since the last message: at most 50 of each (BEP 11), the
    /// rest in later minutes. Only outgoing peers are named: an incoming
    /// peer's address is an ephemeral port, not one to dial.
    fn send_pex(&mut self) {
        use crate::peer::extension::{MAX_PEX_SEND, PEX_REACHABLE, PEX_SEED};
        // Address -> BEP 11 flags: we reached it; a seed if it has all.
        let now: HashMap<SocketAddr, u8> = self
            .peers
            .values()
            .filter(|p| p.connected() && !p.incoming && !p.leaving)
            .map(|p| {
                let seed = if p.bits.is_full() { PEX_SEED } else { 0 };
                (p.addr, PEX_REACHABLE | seed)
            })
            .collect();
        let added: Vec<SocketAddr> = now
            .keys()
            .filter(|a| !self.pex_sent.contains(*a))
            .take(MAX_PEX_SEND)
            .copied()
            .collect();
        let added_flags = added.iter().map(|a| now[a]).collect();
        let dropped: Vec<SocketAddr> = self
            .pex_sent
            .iter()
            .filter(|a| !now.contains_key(*a))
            .take(MAX_PEX_SEND)
            .copied()
            .collect();
        if added.is_empty() && dropped.is_empty() {
            return;
        }
        for a in &added {
            self.pex_sent.insert(*a);
        }
        for d in &dropped {
            self.pex_sent.remove(d);
        }
        let view = Arc::new(crate::peer::extension::Pex {
            added,
            added_flags,
            dropped,
        });
        for p in self.peers.values().filter(|p| p.connected() && !p.leaving) {
            let _ = p.commands.send(peer::Command::Pex(Arc::clone(&view)));
        }
    }

    /// Connected peers by direction, not counting those asked to leave:
    /// (incoming, outgoing).
    fn counts(&self) -> (usize, usize) {
        let mut inc = 0;
        let mut out = 0;
        for p in self.peers.values().filter(|p| !p.leaving) {
            if p.incoming {
                inc += 1;
            } else {
                out += 1;
            }
        }
        (inc, out)
    }

    fn slot_peers(&self, now: Instant) -> Vec<SlotPeer> {
        self.peers
            .iter()
            .filter(|(_, p)| !p.leaving)
            .filter_map(|(&id, p)| {
                let at = p.connected_at?;
                Some(SlotPeer {
                    id,
                    incoming: p.incoming,
                    connected_for: now.duration_since(at),
                    am_interested: p.am_interested,
                    peer_interested: p.peer_interested,
                    since_payload: now.duration_since(p.last_payload.max(at)),
                    penalized: p.snubbed || p.penalized_until.is_some_and(|t| now < t),
                    payload: p.payload,
                })
            })
            .collect()
    }

    /// Makes room by evicting up to `n` of the most useless peers of
    /// `direction`; returns how many went.
    fn evict(&mut self, direction: Option<bool>, n: usize, now: Instant, why: &str) -> usize {
        let victims = slots::victims(&self.slot_peers(now), direction, n);
        for &id in &victims {
            self.close_peer(id, why);
        }
        victims.len()
    }

    fn close_peer(&mut self, id: ConnId, why: &str) -> bool {
        let Some(p) = self.peers.get_mut(&id) else {
            return false;
        };
        log::debug!("peer {} evicted: {why}", p.addr);
        p.leaving = true;
        let _ = p.commands.send(peer::Command::Shutdown);
        p.closer.close();
        true
    }

    fn connect_more(&mut self, now: Instant) {
        self.starved = false;
        let caps = slots::caps(self.opts.max_peers, self.pieces.is_complete());
        let (inc, mut out) = self.counts();
        while out < caps.outbound && inc + out < caps.total {
            // The session-wide cap on connections (threads), shared by
            // every torrent: taken before a candidate, so that a full
            // budget costs no address its turn.
            let Some(permit) = self.core.connections.take() else {
                self.starved = self.book.ready_count(now) > 0;
                return;
            };
            let Some(addr) = self.book.next(now) else {
                return;
            };
            if !self.spawn_peer(addr, None, permit) {
                self.book.closed(addr, Outcome::Retry, now);
                return;
            }
            out += 1;
        }
        // Full, and candidates are waiting to be dialled: useless peers
        // make room for as many of them (at most once per EVICT_EVERY, so
        // dialling cannot churn; each newcomer has `slots::GRACE` to prove
        // itself).
        if self
            .last_evict
            .is_none_or(|t| now.duration_since(t) >= EVICT_EVERY)
        {
            let waiting = self.book.ready_count(now);
            if waiting > 0 {
                let direction = if out >= caps.outbound {
                    Some(false)
                } else {
                    None
                };
                if self.evict(direction, waiting, now, "slot needed for a new peer") > 0 {
                    self.last_evict = Some(now);
                }
            }
        }
    }

    /// A peer connected to us: keep it unless it is banned or the slots are
    /// full of peers that are doing something.
    fn accept(&mut self, inc: peer::Incoming) {
        let addr = inc.addr;
        if self.paused {
            return;
        }
        if inc.accepted.handshake.peer_id == self.peer_id {
            // Ourselves, dialled through a tracker that lists us: answer,
            // so the dialling side sees its own id, knows, and bans the
            // address instead of retrying it.
            let mut stream = inc.stream;
            let reply = Handshake::new(self.torrent.info_hash(), self.peer_id);
            let _ = stream.write_all(&reply.encode());
            return;
        }
        if self.book.is_banned(&addr) {
            return;
        }
        // The session's budget first: evicting one of ours for a newcomer
        // the budget then refuses would lose both.
        let Some(permit) = self.core.connections.take() else {
            log::debug!("incoming {addr} refused: the session's connection budget is used up");
            return;
        };
        let now = Instant::now();
        let caps = slots::caps(self.opts.max_peers, self.pieces.is_complete());
        let (inbound, out) = self.counts();
        if inbound >= caps.inbound || inbound + out >= caps.total {
            let direction = if inbound >= caps.inbound {
                Some(true)
            } else {
                None
            };
            let made_room = self.evict(direction, 1, now, "slot needed for an incoming peer") > 0
                || slots::squatter(&self.slot_peers(now), direction)
                    .is_some_and(|id| self.close_peer(id, "least productive; slot needed"));
            if !made_room {
                log::debug!("incoming {addr} refused: {} peers already", inbound + out);
                return;
            }
        }
        self.spawn_peer(addr, Some(inc), permit);
    }

    /// Starts a connection thread (outgoing, or for an accepted stream).
    /// Returns false if the thread could not be started.
    /// `permit` (a unit of the session's connection budget) goes with the
    /// thread and returns when it ends.
    fn spawn_peer(
        &mut self,
        addr: SocketAddr,
        incoming: Option<peer::Incoming>,
        permit: Permit,
    ) -> bool {
        let is_incoming = incoming.is_some();
        let Some(storage) = self.storage.as_ref() else {
            return false;
        };
        let closer = Closer::default();
        if let Some(inc) = &incoming {
            closer.attach(&inc.stream);
        }
        let id = self.next_conn;
        self.next_conn += 1;
        let (cmd_tx, cmd_rx) = unbounded();
        // Never full: the session keeps at most `max_quota` assigned.
        let (work_tx, work_rx) = bounded(self.max_quota);
        let params = conn::Params {
            id,
            addr,
            info_hash: self.torrent.info_hash(),
            peer_id: self.peer_id,
            layout: Arc::clone(&self.layout),
            have: self.have.clone(),
            unwanted: self.unwanted.clone(),
            work: work_rx,
            events: self.peer_tx.clone(),
            pieces: self.piece_tx.clone(),
            commands: cmd_rx,
            limits: self.opts.limits.clone(),
            storage: Arc::clone(storage),
            incoming,
            closer: closer.clone(),
            // The permit stays here, with the thread's handle.
            hold: Box::new(()),
            throttle: Arc::clone(&self.core.throttle),
            buffers: self.core.buffers.clone(),
            info: Arc::clone(&self.info),
            listen_port: self.core.port,
            private: self.torrent.private(),
        };
        match conn::spawn(params) {
            Ok(thread) => {
                self.threads.push((thread, permit));
                let now = Instant::now();
                self.peers.insert(
                    id,
                    PeerHandle {
                        addr,
                        commands: cmd_tx,
                        closer,
                        work: work_tx,
                        incoming: is_incoming,
                        connected_at: None,
                        leaving: false,
                        paused_out: false,
                        hash_fails: 0,
                        banned: None,
                        bits: Bitfield::new(self.torrent.piece_count()),
                        assigned: Vec::new(),
                        weak: Vec::new(),
                        choking_us: true,
                        hungry: false,
                        hungry_at: 0,
                        delivered_bytes_now: 0,
                        delivered: 0,
                        payload: 0,
                        last_progress: now,
                        snubbed: false,
                        am_interested: false,
                        peer_interested: false,
                        last_payload: now,
                        unchoked: false,
                        unchoked_at: None,
                        last_request: None,
                        penalized_until: None,
                        interested_since: None,
                        last_stats: now,
                        down: 0,
                        up: 0,
                        recent_down: 0,
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

    /// How many pieces `p` may hold at once: one while snubbed; otherwise
    /// a few, plus what it delivers in `QUOTA_SECS` at its recent rate, up
    /// to what fills its request pipeline. A peer that trickles keeps a
    /// handful; a fast one gets its whole pipeline within a second.
    fn quota(&self, p: &PeerHandle) -> usize {
        if p.snubbed {
            return 1;
        }
        let rate = p.recent_down.max(p.delivered_bytes_now);
        let piece_len = u64::from(self.layout.piece_length().max(1));
        let by_rate = (rate * QUOTA_SECS / piece_len) as usize;
        (FIRST_QUOTA + by_rate).min(self.max_quota)
    }

    /// Assigns `id` pieces up to its quota; marks it hungry if there is
    /// nothing it can do.
    fn feed(&mut self, id: ConnId, now: Instant) {
        let Some(p) = self.peers.get(&id) else {
            return;
        };
        if p.leaving || p.choking_us || !p.connected() || self.pieces.is_complete() {
            return;
        }
        let quota = self.quota(p);
        let p = self.peers.get_mut(&id).expect("checked above");
        while p.assigned.len() < quota {
            let proven = p.delivered > 0;
            let Some(pick) = self.pieces.assign(&p.bits, &p.assigned, proven, now) else {
                p.hungry = true;
                p.hungry_at = self.pieces.version();
                return;
            };
            let piece = pick.piece();
            if let Pick::Duplicate(_) = pick {
                log::debug!("endgame: piece {piece} also to {}", p.addr);
            }
            if p.assigned.is_empty() {
                p.last_progress = now;
            }
            p.assigned.push(piece);
            if !proven {
                p.weak.push(piece);
            }
            // Cannot be full (sized to the quota); if the thread is gone,
            // its `Exited` releases the piece.
            let _ = p.work.try_send(piece);
        }
        p.hungry = false;
    }

    /// Feeds hungry peers, fastest first (in endgame, the fastest peers get
    /// the copies): those that have `piece` when it went back to the
    /// queue, or all of them.
    fn feed_hungry(&mut self, piece: Option<PieceIndex>, now: Instant) {
        let mut hungry: Vec<(u64, ConnId)> = self
            .peers
            .iter()
            .filter(|(_, p)| p.hungry && piece.is_none_or(|x| p.bits.has(x)))
            .map(|(&id, p)| (p.recent_down, id))
            .collect();
        hungry.sort_unstable_by(|a, b| b.cmp(a));
        for (_, id) in hungry {
            self.feed(id, now);
            if piece.is_some_and(|x| !self.pieces.is_queued(x)) {
                break;
            }
        }
    }

    /// `id` no longer holds `piece` (abandoned, or it left).
    fn release(&mut self, id: ConnId, piece: PieceIndex, now: Instant) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let Some(at) = p.assigned.iter().position(|&x| x == piece) else {
            return; // already let go of (a crossing release)
        };
        p.assigned.swap_remove(at);
        let strong = p.let_go_weak(piece);
        if self.pieces.release(piece, strong) {
            self.feed_hungry(Some(piece), now);
        }
    }

    /// Snubbing (BEP 3 clients' term): a peer that holds pieces and has
    /// completed none for `SNUB_AFTER` keeps only one at a time; a trickle
    /// of blocks does not count as progress.
    fn update_snubs(&mut self, now: Instant) {
        for p in self.peers.values_mut() {
            let snub = !p.assigned.is_empty() && now.duration_since(p.last_progress) >= SNUB_AFTER;
            if snub && !p.snubbed {
                log::info!(
                    "peer {} snubbed: no piece for {}s",
                    p.addr,
                    SNUB_AFTER.as_secs()
                );
            }
            p.snubbed = snub || (p.snubbed && !p.assigned.is_empty());
        }
    }
    fn update_rate(&mut self, now: Instant) {
        let verified = self.shared.verified_bytes.load(Ordering::Relaxed);
        self.shared.uploaded.store(self.uploaded, Ordering::Relaxed);
        let (down, up) = self.rates.record(now, verified, self.uploaded);
        self.shared.rate.store(down, Ordering::Relaxed);
        self.shared.upload_rate.store(up, Ordering::Relaxed);
    }

    fn on_peer_event(&mut self, ev: peer::Event) {
        let now = Instant::now();
        match ev {
            peer::Event::Incoming(inc) => self.accept(*inc),
            peer::Event::Stats {
                id,
                downloaded,
                uploaded,
                peer_interested,
                am_interested,
                requests,
            } => {
                self.uploaded += uploaded;
                if let Some(p) = self.peers.get_mut(&id) {
                    p.down += downloaded;
                    p.up += uploaded;
                    p.recent_down = downloaded;
                    p.delivered_bytes_now = 0;
                    p.payload += downloaded + uploaded;
                    if downloaded > 0 || uploaded > 0 {
                        p.last_payload = now;
                    }
                    if requests > 0 {
                        p.last_request = Some(now);
                    }
                    p.am_interested = am_interested;
                    p.last_stats = now;
                    let newly = peer_interested && !p.peer_interested;
                    p.peer_interested = peer_interested;
                    if newly {
                        p.interested_since = Some(now);
                    }
                    // A newly interested peer need not wait 10 s: the choker
                    // looks again within a second (ties favour peers never
                    // unchoked, so a newcomer among idle peers gets a slot).
                    if newly {
                        self.rechoke_soon = true;
                    }
                }
            }
            peer::Event::Connected { id, .. } => {
                if let Some(p) = self.peers.get_mut(&id) {
                    p.connected_at = Some(now);
                    p.last_payload = now;
                    self.connected_count += 1;
                    self.shared
                        .peers
                        .store(self.connected_count, Ordering::Relaxed);
                    self.book.connected(&p.addr);
                    let from = if p.incoming {
                        None
                    } else {
                        self.book.origin(&p.addr)
                    };
                    self.sources.count(from);
                    log::info!("peer {} connected ({})", p.addr, PeerSources::name(from));
                    let _ = self.events.try_send(Event::PeerConnected(p.addr));
                }
            }
            peer::Event::Bitfield { id, bits } => {
                if let Some(p) = self.peers.get_mut(&id) {
                    self.pieces.peer_bitfield(&bits, true);
                    p.bits = bits;
                    self.feed(id, now);
                }
            }
            peer::Event::Pex { id, added } => {
                // BEP 27: a private torrent's peers come from its trackers.
                if self.torrent.private() {
                    return;
                }
                let Some(from) = self.peers.get(&id).map(|p| p.addr) else {
                    return;
                };
                // Whatever peers say, this download takes at most
                // `PEX_PER_MINUTE` new addresses a minute from all of
                // them together: PEX cannot flood the book (pushing out
                // tracker addresses) or steer many of our connections.
                if now.duration_since(self.pex_window) >= Duration::from_secs(60) {
                    self.pex_window = now;
                    self.pex_taken = 0;
                }
                let mut new = 0;
                for a in added.into_iter().filter(|a| worth_dialling(a, &from)) {
                    if self.pex_taken >= PEX_PER_MINUTE {
                        break;
                    }
                    // O(1) each; the book caps and dedups.
                    if self.book.add(a, Origin::Pex) {
                        new += 1;
                        self.pex_taken += 1;
                    }
                }
                let from = Some(from);
                if let Some(from) = from {
                    log::debug!("peer {from}: {new} new peers by PEX");
                }
                self.from_pex += new;
            }
            peer::Event::Have { id, piece } => {
                if let Some(p) = self.peers.get_mut(&id) {
                    p.bits.set(piece);
                    let queued = self.pieces.peer_have(piece);
                    // A hungry peer had nothing to do before this piece.
                    if queued && p.hungry {
                        self.feed(id, now);
                    }
                }
            }
            peer::Event::Choked { id, choked } => {
                if let Some(p) = self.peers.get_mut(&id) {
                    p.choking_us = choked;
                    let stale = p.hungry && p.hungry_at == self.pieces.version();
                    if !choked && !stale {
                        self.feed(id, now);
                    }
                }
            }
            peer::Event::Abandoned { id, piece } => {
                self.release(id, piece, now);
                self.feed(id, now);
            }
            peer::Event::Exited {
                id,
                addr,
                error,
                connected,
            } => self.on_exited(id, addr, error, connected, now),
        }
    }

    fn on_exited(
        &mut self,
        id: ConnId,
        addr: SocketAddr,
        error: Option<conn::Error>,
        connected: bool,
        now: Instant,
    ) {
        let Some(handle) = self.peers.remove(&id) else {
            return;
        };
        self.pieces.peer_bitfield(&handle.bits, false);
        for &piece in &handle.assigned {
            let strong = !handle.weak.contains(&piece);
            if self.pieces.release(piece, strong) {
                self.feed_hungry(Some(piece), now);
            }
        }
        if handle.connected_at.is_some() {
            self.connected_count -= 1;
            self.shared
                .peers
                .store(self.connected_count, Ordering::Relaxed);
        }
        if handle.unchoked {
            self.rechoke_due = true;
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
        if misbehaved || handle.banned.is_some() {
            log::info!("peer {addr} banned: {reason}");
            self.book.ban(addr);
        } else if handle.incoming {
            // Its source port will not be seen again: nothing to keep.
        } else if handle.paused_out {
            // Closed by a pause, not by anything it did: dialled again
            // (at once if the download was resumed meanwhile).
            self.book.closed(addr, Outcome::Again, now);
        } else if error.is_none() || handle.leaving {
            self.book.closed(addr, Outcome::Forget, now);
        } else if self.book.origin(&addr) == Some(Origin::Pex) && !connected {
            // Unreachable and named only by another peer: not worth a
            // second try (PEX must not make us dial a stranger's target
            // over and over).
            self.book.closed(addr, Outcome::Forget, now);
        } else {
            // Unreachable, or connected and then went away: retried with
            // backoff a few times, then forgotten.
            self.book.closed(addr, Outcome::Retry, now);
        }
    }

    /// A batch of whole pieces from one connection: each is checked off,
    /// and those to verify go to the hash pool in jobs of about
    /// `HASH_JOB_BYTES` (one job per piece when pieces are that big, so
    /// large pieces still hash on every core).
    fn on_completed(&mut self, batch: Vec<CompletedPiece>, write_tx: &Sender<WriteCmd>) {
        let now = Instant::now();
        let Some(from) = batch.first().map(|cp| cp.from) else {
            return;
        };
        let mut job = Vec::new();
        let mut job_bytes = 0;
        for cp in batch {
            if !self.check_off(&cp, now) {
                continue; // an endgame duplicate that lost the race
            }
            let len = cp.data.len() as u64;
            self.pipeline_bytes += len;
            self.core.pipeline.fetch_add(len, Ordering::Relaxed);
            job_bytes += len;
            job.push(cp);
            if job_bytes >= HASH_JOB_BYTES {
                self.spawn_hash_job(std::mem::take(&mut job), write_tx);
                job_bytes = 0;
            }
        }
        if !job.is_empty() {
            self.spawn_hash_job(job, write_tx);
        }
        self.feed(from, now);
    }

    /// Records a whole piece from a connection; false if it needs no
    /// check (another copy is already verified or written).
    fn check_off(&mut self, cp: &CompletedPiece, now: Instant) -> bool {
        // `Some(strong)` if the sender still held the piece.
        let holder = match self.peers.get_mut(&cp.from) {
            Some(p) => match p.assigned.iter().position(|&x| x == cp.piece) {
                Some(at) => {
                    p.assigned.swap_remove(at);
                    let strong = p.let_go_weak(cp.piece);
                    p.delivered_bytes_now += cp.data.len() as u64;
                    p.delivered += 1;
                    p.last_progress = now;
                    p.snubbed = false;
                    Some(strong)
                }
                None => None,
            },
            None => None,
        };
        self.pieces.completed(cp.piece, holder)
    }

    /// Hashes `job` on the pool. Pieces that pass go from there straight
    /// to the writer, whose one answer (on `written_tx`) ends the job;
    /// failures come back as notes first.
    fn spawn_hash_job(&mut self, job: Vec<CompletedPiece>, write_tx: &Sender<WriteCmd>) {
        self.jobs += 1;
        let torrent = Arc::clone(&self.torrent);
        let storage = Arc::clone(self.storage.as_ref().expect("set while downloading"));
        let notes = self.hashed_tx.clone();
        let done = self.written_tx.clone();
        let write_tx = write_tx.clone();
        self.core.pool.spawn(move || {
            let mut passed = Vec::with_capacity(job.len());
            for cp in job {
                let expected = torrent
                    .piece_hash(cp.piece)
                    .expect("piece index comes from this torrent");
                if crate::hash::sha1(&cp.data) == *expected {
                    passed.push((cp.piece, cp.data));
                } else {
                    let _ = notes.send(HashNote::Failed {
                        from: cp.from,
                        piece: cp.piece,
                        len: cp.data.len() as u64,
                    });
                }
            }
            // Blocks when the writer is 8 batches behind; the writer never
            // waits on the pool, so this cannot deadlock.
            let cmd = WriteCmd::Pieces {
                storage,
                pieces: passed,
                done,
            };
            if write_tx.send(cmd).is_err() {
                let _ = notes.send(HashNote::WriterGone);
            }
        });
    }

    fn on_hash_note(&mut self, note: HashNote) -> Result<(), Error> {
        let (from, piece, len) = match note {
            HashNote::Failed { from, piece, len } => (from, piece, len),
            HashNote::WriterGone => {
                self.jobs = self.jobs.saturating_sub(1);
                return Err(Error::Thread("writer thread ended".into()));
            }
        };
        let now = Instant::now();
        self.pieces.hashed(piece, false, now);
        self.pipeline_bytes -= len;
        self.core.pipeline.fetch_sub(len, Ordering::Relaxed);
        log::warn!("piece {piece} failed its hash check");
        if self.pieces.is_queued(piece) {
            self.feed_hungry(Some(piece), now);
        }
        if let Some(peer) = self.peers.get_mut(&from) {
            peer.hash_fails += 1;
            if peer.hash_fails >= MAX_HASH_FAILS && peer.banned.is_none() {
                let why = format!("sent {} pieces that failed the hash check", peer.hash_fails);
                log::warn!("peer {} {why}; dropped and banned", peer.addr);
                let _ = peer.commands.send(peer::Command::Shutdown);
                peer.leaving = true;
                peer.banned = Some(why);
            }
        }
        Ok(())
    }

    /// Waits (bounded) for every hash job still running, so pieces already
    /// verified are on disk, and counted, when the download ends.
    fn finish_jobs(&mut self, counters: &tracker::Counters) {
        let deadline = Instant::now() + JOBS_GRACE;
        while self.jobs > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            select! {
                recv(self.written_rx) -> w => {
                    if let Ok(batch) = w {
                        self.jobs = self.jobs.saturating_sub(1);
                        for (piece, result) in batch {
                            // The download already ends with an error,
                            // reported once by the caller.
                            if let Err(e) = self.on_written(piece, result, counters) {
                                log::debug!("{e}");
                            }
                        }
                    }
                }
                recv(self.hashed_rx) -> h => {
                    if let Ok(h) = h {
                        let _ = self.on_hash_note(h);
                    }
                }
                default(left) => {
                    log::warn!("{} hash jobs still unanswered; not waiting", self.jobs);
                    return;
                }
            }
        }
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
        self.core.pipeline.fetch_sub(len, Ordering::Relaxed);
        // Passed its check (failures come as notes) and is now on disk.
        self.downloaded += len;
        self.pieces.hashed(piece, true, Instant::now());
        self.pieces.written(piece);
        self.have.set(piece);
        self.shared.set_have(piece.0);
        let verified = self.shared.verified_bytes.fetch_add(len, Ordering::Relaxed) + len;
        // Only wanted pieces are ever fetched.
        self.shared
            .wanted_verified_bytes
            .fetch_add(len, Ordering::Relaxed);
        self.shared.pieces_done.fetch_add(1, Ordering::Relaxed);
        counters
            .downloaded
            .store(self.downloaded, Ordering::Relaxed);
        counters
            .left
            .store(self.torrent.total_length() - verified, Ordering::Relaxed);
        // Peers fetching a copy (endgame) hear at once and cancel it; every
        // peer hears in the next batch.
        if self.pieces.holders(piece) > 0 {
            for p in self.peers.values().filter(|p| p.assigned.contains(&piece)) {
                let _ = p.commands.send(peer::Command::Done(piece));
            }
        }
        self.pending_haves.push(piece);
        let _ = self.events.try_send(Event::PieceDone {
            piece: piece.0,
            progress: self.shared.snapshot(self.started.elapsed()),
        });
        Ok(())
    }

    fn on_tracker(&mut self, r: tracker::Report) -> Result<(), Error> {
        match r {
            tracker::Report::Peers(list) => {
                log::debug!("tracker returned {} peers", list.len());
                // O(1) each: a reply of any size costs linear time.
                for addr in list {
                    self.book.add(addr, Origin::Tracker);
                }
                if !self.paused {
                    self.connect_more(Instant::now());
                }
            }
            tracker::Report::RoundFailed { error, first_round } => {
                let _ = self.events.try_send(Event::TrackerError(error.to_string()));
                self.last_tracker_error = Some(error.to_string());
                // With nothing else to go on, a tracker that fails the first
                // round is the answer: fail now rather than wait for peers
                // that cannot come.
                if self.pieces.is_complete() {
                    return Ok(()); // seeding: the data is safe either way
                }
                let nobody = self.peers.is_empty() && self.book.candidates() == 0;
                // With the DHT looking, a dead tracker is not the end.
                if first_round && nobody && self.opts.peers.is_empty() && self.dht.is_none() {
                    return Err(Error::Tracker(error));
                }
                if matches!(error, tracker::Error::Refused { .. }) && nobody {
                    return Err(Error::Tracker(error));
                }
            }
        }
        Ok(())
    }
}

/// Pieces still between "assembled" and "written" when a download ends
/// (cancelled, failed) give their bytes back to the session's budget.
impl Drop for Coordinator {
    fn drop(&mut self) {
        self.core
            .pipeline
            .fetch_sub(self.pipeline_bytes, Ordering::Relaxed);
    }
}
