//! The metadata phase of a download started from a magnet link: on the
//! download's own session thread, before any file exists. It gathers
//! peers (the magnet's `x.pe`, `AddOptions::peers`, the magnet's trackers),
//! opens metadata-only connections (`peer::meta_conn`) to them, and moves
//! messages between those threads and the pure `session::metadata` state,
//! which decides whom to ask for which piece and whom to believe, until
//! the info dict is verified against the info hash. Then every thread of
//! the phase is closed and joined, and the ordinary session
//! (`coordinator`) takes over with the addresses learned here.

use super::addrbook::{AddressBook, Origin, Outcome};
use super::coordinator::Context;
use super::metadata::{MetadataFetch, Outcome as Got, Verdict};
use super::{AddOptions, Control, Error, Event};
use crate::peer::extension;
use crate::peer::meta_conn::{self, MetaCommand, MetaEvent, MetaParams};
use crate::peer::{Closer, ConnId};
use crate::tracker::{self, Announcer};
use crate::types::InfoHash;
use crossbeam_channel::{never, select, unbounded, Sender};
use std::cell::Cell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const TICK: Duration = Duration::from_millis(100);
/// Metadata connections open at once: a few peers suffice for a few MiB.
const MAX_META_PEERS: usize = 8;
/// A peer that answers none of its requests for this long is closed (two
/// of `session::metadata`'s request timeouts).
const STALLED: Duration = Duration::from_secs(6);
/// A ready peer neither asked nor giving anything for this long gives its
/// slot to an untried address.
const IDLE_SLOT: Duration = Duration::from_secs(5);
/// Addresses handed on to the download at most.
const MAX_LEARNED: usize = 2000;

/// What the phase ends with: the verified info dict, the addresses it
/// learned (the ones that answered first), and whether the user paused
/// meanwhile.
pub(super) struct Fetched {
    pub(super) info: Vec<u8>,
    pub(super) peers: Vec<(SocketAddr, Origin)>,
    /// Liars: never to be dialled by the download either.
    pub(super) banned: Vec<SocketAddr>,
    pub(super) paused: bool,
}

struct MetaPeer {
    addr: SocketAddr,
    commands: Sender<MetaCommand>,
    closer: Closer,
    ready: bool,
    banned: Option<String>,
    /// Since when a request to it has gone unanswered (`None` when it
    /// owes nothing); a `Cell` so that asking needs no `&mut`.
    owing_since: Cell<Option<Instant>>,
    /// When it became ready, and pieces it delivered.
    ready_at: Option<Instant>,
    delivered: u32,
}

pub(super) fn fetch(
    info_hash: InfoHash,
    trackers: &[String],
    peers: &[(SocketAddr, Origin)],
    opts: &AddOptions,
    ctx: &Context,
) -> Result<Fetched, Error> {
    let core = &ctx.core;
    let mut paused = opts.paused;
    let mut book = AddressBook::default();
    let mut learned: Vec<(SocketAddr, Origin)> = Vec::new();
    let learn = |book: &mut AddressBook,
                 learned: &mut Vec<(SocketAddr, Origin)>,
                 a: SocketAddr,
                 origin: Origin| {
        if book.add(a, origin) && learned.len() < MAX_LEARNED {
            learned.push((a, origin));
        }
    };
    for &(a, origin) in peers {
        learn(&mut book, &mut learned, a, origin);
    }

    let counters = Arc::new(tracker::Counters::default());
    // Size unknown: a leecher that wants everything (some trackers hand
    // seeders only to peers with something left).
    counters.left.store(1, Ordering::Relaxed);
    let (tracker_tx, tracker_rx) = unbounded();
    let (report_tx, report_rx) = unbounded();
    let announcer = if trackers.is_empty() {
        None
    } else {
        let a = Announcer {
            tiers: trackers.iter().map(|t| vec![t.clone()]).collect(),
            info_hash,
            peer_id: core.peer_id,
            port: core.port.unwrap_or(0),
            counters,
            timeout: opts.announce_timeout,
            paused,
        };
        Some(
            a.spawn(tracker_rx, report_tx)
                .map_err(|e| Error::Thread(e.to_string()))?,
        )
    };

    // Whether the torrent is private is not known yet: the DHT is asked
    // (a magnet with neither `tr` nor `x.pe` has nothing else); the
    // download proper drops it if the metadata says private.
    let dht = core.dht.as_ref().map(|d| d.register(info_hash, core.port));
    let dht_rx = dht.as_ref().map_or_else(never, |r| r.peers.clone());

    let (meta_tx, meta_rx) = unbounded::<MetaEvent>();
    let mut conns: HashMap<ConnId, MetaPeer> = HashMap::new();
    let mut threads = Vec::new();
    let mut next_id: ConnId = 0;
    let mut state = MetadataFetch::new(info_hash);
    let mut reports = report_rx.clone();
    let mut last_peer = Instant::now();
    let started = Instant::now();
    // Addresses banned here, handed on so the download never dials them.
    let mut banned: Vec<SocketAddr> = Vec::new();
    let mut next_tick = Instant::now();

    let result = loop {
        let now = Instant::now();
        if now >= next_tick {
            next_tick = now + TICK;
            if conns.is_empty() && book.candidates() == 0 {
                if let Some(d) = &dht {
                    d.want_peers();
                }
            }
            // Connect more.
            while !paused && conns.len() < MAX_META_PEERS.min(opts.max_peers) {
                let Some(permit) = core.connections.take() else {
                    break;
                };
                let Some(addr) = book.next(now) else { break };
                let (cmd_tx, cmd_rx) = unbounded();
                let closer = Closer::default();
                let params = MetaParams {
                    id: next_id,
                    addr,
                    info_hash,
                    peer_id: core.peer_id,
                    events: meta_tx.clone(),
                    commands: cmd_rx,
                    limits: opts.limits.clone(),
                    closer: closer.clone(),
                    listen_port: core.port,
                    hold: Box::new(permit),
                };
                match meta_conn::spawn(params) {
                    Ok(t) => {
                        threads.push(t);
                        conns.insert(
                            next_id,
                            MetaPeer {
                                addr,
                                commands: cmd_tx,
                                closer,
                                ready: false,
                                banned: None,
                                owing_since: Cell::new(None),
                                ready_at: None,
                                delivered: 0,
                            },
                        );
                        next_id += 1;
                    }
                    Err(e) => {
                        log::warn!("cannot start a metadata thread: {e}");
                        book.closed(addr, Outcome::Retry, now);
                        break;
                    }
                }
            }
            // A peer that owes answers for `STALLED` gives its slot to
            // someone else (it may only be slow: not banned). Peers that
            // take requests and never answer cannot hold every slot.
            for p in conns.values_mut() {
                let stalled = p
                    .owing_since
                    .get()
                    .is_some_and(|t| now.duration_since(t) >= STALLED);
                if stalled && p.banned.is_none() {
                    p.owing_since.set(None);
                    close(
                        p,
                        format!("metadata: no answer for {}s", STALLED.as_secs()),
                        false,
                    );
                }
            }
            // Slots are few: while untried addresses wait, one peer that
            // has been ready for `IDLE_SLOT` without being asked anything
            // or delivering anything (e.g. it claims another size than
            // the one being fetched) makes room.
            if conns.len() >= MAX_META_PEERS.min(opts.max_peers) && book.ready_count(now) > 0 {
                let idle = conns.values_mut().find(|p| {
                    p.banned.is_none()
                        && p.delivered == 0
                        && p.owing_since.get().is_none()
                        && p.ready_at
                            .is_some_and(|t| now.duration_since(t) >= IDLE_SLOT)
                });
                if let Some(p) = idle {
                    p.ready_at = None;
                    close(
                        p,
                        "metadata: nothing asked or given; slot needed".into(),
                        false,
                    );
                }
            }
            // Pieces whose requests timed out are asked of others.
            for (&id, p) in &conns {
                if p.ready && p.banned.is_none() {
                    request(&mut state, id, p, now);
                }
            }
            if conns.values().any(|p| p.ready) || paused {
                last_peer = now;
            } else if now.duration_since(last_peer) >= opts.no_peer_timeout {
                break Err(Error::NoPeers {
                    waited: now.duration_since(last_peer),
                    last_tracker_error: None,
                });
            }
            let (have, _) = state.progress();
            let size = u64::from(state.size().unwrap_or(0));
            let bytes = (u64::from(have) * u64::from(extension::METADATA_PIECE_LEN)).min(size);
            ctx.shared.metadata_bytes.store(bytes, Ordering::Relaxed);
        }
        let timeout = next_tick.saturating_duration_since(Instant::now());
        select! {
            recv(meta_rx) -> ev => {
                let Ok(ev) = ev else { continue };
                let now = Instant::now();
                match ev {
                    MetaEvent::Ready { id, ext } => {
                        let Some(p) = conns.get_mut(&id) else { continue };
                        if ext.ut_metadata.is_none() {
                            let _ = p.commands.send(MetaCommand::Shutdown);
                            continue;
                        }
                        p.ready = true;
                        p.ready_at.get_or_insert(now);
                        book.connected(&p.addr);
                        log::info!("peer {} connected (metadata)", p.addr);
                        let _ = ctx.events.try_send(Event::PeerConnected(p.addr));
                        let Some(size) = ext.metadata_size else {
                            // BEP 9: a peer with the metadata says its size.
                            close(p, "metadata: no size offered".into(), false);
                            continue;
                        };
                        match state.peer_size(id, size) {
                            None => {
                                if let Some(adopted) = state.size() {
                                    ctx.shared.metadata_size.store(u64::from(adopted), Ordering::Relaxed);
                                }
                                request(&mut state, id, p, now);
                            }
                            Some(v) => convict(&mut conns, v),
                        }
                    }
                    MetaEvent::Data { id, piece, total_size, data } => {
                        log::trace!("metadata piece {piece} from {id} after {:?}", started.elapsed());
                        if let Some(p) = conns.get_mut(&id) {
                            p.owing_since.set(None);
                            p.delivered += 1;
                        }
                        match state.on_data(id, piece, total_size, &data) {
                            Got::Complete { info, verdicts } => {
                                for v in verdicts {
                                    convict(&mut conns, v);
                                }
                                break Ok(info);
                            }
                            Got::Progress => {
                                if let Some(p) = conns.get(&id) {
                                    request(&mut state, id, p, now);
                                }
                            }
                            Got::Verdicts(list) => {
                                for v in list {
                                    convict(&mut conns, v);
                                }
                                // Pieces of the convicted go to the others.
                                for (&other, p) in &conns {
                                    if p.ready && p.banned.is_none() {
                                        request(&mut state, other, p, now);
                                    }
                                }
                            }
                        }
                    }
                    MetaEvent::Reject { id, piece } => {
                        if let Some(p) = conns.get(&id) {
                            p.owing_since.set(None);
                        }
                        match state.on_reject(id, piece) {
                            None => {
                                for (&other, p) in &conns {
                                    if p.ready && p.banned.is_none() {
                                        request(&mut state, other, p, now);
                                    }
                                }
                            }
                            Some(v) => convict(&mut conns, v),
                        }
                    }
                    MetaEvent::Exited { id, addr, error, connected } => {
                        state.peer_gone(id);
                        let Some(p) = conns.remove(&id) else { continue };
                        let reason = p
                            .banned
                            .clone()
                            .or_else(|| error.as_ref().map(|e| e.to_string()))
                            .unwrap_or_else(|| "closed".into());
                        if connected {
                            log::info!("peer {addr} dropped: {reason}");
                        }
                        if p.banned.is_some() || error.as_ref().is_some_and(|e| e.is_misbehaviour()) {
                            log::info!("peer {addr} banned: {reason}");
                            book.ban(addr);
                            banned.push(addr);
                        } else if p.ready {
                            // Worth dialling again once the metadata is in.
                            book.closed(addr, Outcome::Forget, now);
                        } else {
                            book.closed(addr, Outcome::Retry, now);
                        }
                    }
                }
            }
            recv(reports) -> r => match r {
                Ok(tracker::Report::Peers(list)) => {
                    for a in list {
                        learn(&mut book, &mut learned, a, Origin::Tracker);
                    }
                    next_tick = Instant::now(); // dial them now
                }
                Ok(tracker::Report::RoundFailed { error, .. }) => {
                    let _ = ctx.events.try_send(Event::TrackerError(error.to_string()));
                }
                Err(_) => reports = never(),
            },
            recv(dht_rx) -> r => {
                for a in r.into_iter().flatten() {
                    learn(&mut book, &mut learned, a, Origin::Dht);
                }
                next_tick = Instant::now(); // dial them now
            }
            recv(ctx.peer_rx) -> ev => {
                // Incoming peers wait for the download proper (dropped:
                // closed); stray events of nobody are ignored.
                drop(ev);
            }
            recv(ctx.control) -> c => match c {
                Ok(Control::Pause) => {
                    paused = true;
                    let _ = tracker_tx.send(tracker::Command::Pause);
                    let _ = ctx.events.try_send(Event::Paused);
                }
                Ok(Control::Resume) => {
                    paused = false;
                    let _ = tracker_tx.send(tracker::Command::Resume);
                    let _ = ctx.events.try_send(Event::Resumed);
                }
                Ok(Control::Cancel) | Err(_) => break Err(Error::Cancelled),
            },
            default(timeout) => {}
        }
    };

    // Close and join every thread of the phase.
    let _ = tracker_tx.send(tracker::Command::Shutdown);
    if let Some((_, stopper)) = &announcer {
        stopper.abort();
    }
    for p in conns.values() {
        let _ = p.commands.send(MetaCommand::Shutdown);
        p.closer.close();
    }
    for t in threads {
        let _ = t.join();
    }
    if let Some((t, _)) = announcer {
        let _ = t.join();
    }
    // Peers convicted by the last message (the completing attempt) have
    // not exited through the loop: banned here.
    for p in conns.values() {
        if let Some(why) = &p.banned {
            if !book.is_banned(&p.addr) {
                log::info!("peer {} banned: {why}", p.addr);
                book.ban(p.addr);
                banned.push(p.addr);
            }
        }
    }
    let info = result?;
    // Everyone learned and not banned, those that answered first.
    let answered: std::collections::HashSet<SocketAddr> = conns
        .values()
        .filter(|p| p.banned.is_none())
        .map(|p| p.addr)
        .collect();
    let mut good: Vec<(SocketAddr, Origin)> = learned
        .into_iter()
        .filter(|(a, _)| !book.is_banned(a))
        .collect();
    good.sort_by_key(|(a, _)| !answered.contains(a));
    Ok(Fetched {
        info,
        peers: good,
        banned,
        paused,
    })
}

/// Disconnects a peer the fetch state convicted (and bans it, unless it
/// only had nothing to give).
fn convict(conns: &mut HashMap<ConnId, MetaPeer>, v: Verdict) {
    if let Some(p) = conns.get_mut(&v.peer) {
        close(p, v.fault.to_string(), v.fault.ban());
    }
}

/// Asks `id` for what the fetch state gives it.
fn request(state: &mut MetadataFetch, id: ConnId, p: &MetaPeer, now: Instant) {
    while let Some(piece) = state.next_request(id, now) {
        if p.commands.send(MetaCommand::Request(piece)).is_err() {
            return;
        }
        if p.owing_since.get().is_none() {
            p.owing_since.set(Some(now));
        }
    }
}

fn close(p: &mut MetaPeer, why: String, ban: bool) {
    log::info!("metadata peer {}: {why}", p.addr);
    if ban {
        p.banned = Some(why);
    }
    let _ = p.commands.send(MetaCommand::Shutdown);
    p.closer.close();
}
