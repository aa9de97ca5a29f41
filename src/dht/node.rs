//! The DHT node's thread: the only code that touches its UDP socket. It
//! reads a datagram (or times out after `POLL`), drains its command
//! channel, and every `TICK` expires queries, drives lookups, maintains
//! the routing tables and saves the state file. Decisions are the pure
//! modules' (`table`, `lookup`, `store`, `krpc`); this file matches
//! answers to queries and moves bytes.
//!
//! Bounded: queries in flight (`MAX_PENDING`), lookups at once, peers sent
//! per lookup, and answers per second (`store::AnswerBudget`); a datagram
//! costs time linear in its size.

use super::id::NodeId;
use super::krpc::{self, Body, Msg, NodeAddr, Query, Response, Want};
use super::lookup::{Lookup, ALPHA};
use super::state::{self, Saved};
use super::store::{AnswerBudget, PeerStore, Tokens};
use super::table::{Chore, Table, K};
use super::{Command, Stats};
use crate::peer::extension::canonical;
use crate::session::addrbook::worth_dialling;
use crate::types::{random_bytes, EntropyError, InfoHash, Rng};
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest wait for a datagram before commands and timers are looked at.
const POLL: Duration = Duration::from_millis(20);
/// Timers (timeouts, lookups, maintenance) run this often.
const TICK: Duration = Duration::from_millis(50);
/// A query unanswered this long has failed.
const TIMEOUT: Duration = Duration::from_secs(3);
/// Our queries in flight at most.
const MAX_PENDING: usize = 256;
/// Lookups running at once (each has at most `ALPHA` queries in flight).
const MAX_LOOKUPS: usize = 32;
/// A lookup is abandoned after this long, converged or not.
const LOOKUP_DEADLINE: Duration = Duration::from_secs(30);
/// A torrent is looked up (and announced) again this often (BEP 5 tokens
/// last about 10 minutes; libtorrent re-announces every 15).
const REANNOUNCE: Duration = Duration::from_secs(15 * 60);
/// ... and at most this often when the download asks for peers.
const WANT_SPACING: Duration = Duration::from_secs(10);
/// A lookup that reached nobody (the table was empty) is retried after
/// this long.
const RETRY_EMPTY: Duration = Duration::from_secs(5);
/// Peers one lookup hands the download at most.
const MAX_FOUND: usize = 2000;
/// Re-bootstrap backoff while the table is empty.
const BOOTSTRAP_FIRST: Duration = Duration::from_secs(5);
const BOOTSTRAP_MAX: Duration = Duration::from_secs(300);
/// Known bootstrap addresses kept at most.
const MAX_BOOTSTRAP: usize = 64;
/// Table maintenance (pings, refreshes) runs this often, pinging at most
/// `PINGS_PER_ROUND` nodes.
const MAINTAIN_EVERY: Duration = Duration::from_secs(10);
const PINGS_PER_ROUND: usize = 8;
const SAVE_EVERY: Duration = Duration::from_secs(600);

#[derive(Clone, Copy)]
enum Purpose {
    Lookup(u64),
    Ping,
    Announce,
}

struct Pending {
    addr: SocketAddr,
    sent: Instant,
    purpose: Purpose,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum What {
    Bootstrap,
    Refresh,
    /// For a registration.
    Peers(u64),
}

struct Running {
    id: u64,
    lookup: Lookup,
    what: What,
    started: Instant,
    found: usize,
}

struct Registered {
    info_hash: InfoHash,
    port: Option<u16>,
    sink: Sender<Vec<SocketAddr>>,
    running: bool,
    last_start: Option<Instant>,
    next: Instant,
    want: bool,
    /// When registered, for the log line of the first peers.
    since: Instant,
    found_any: bool,
}

pub(crate) struct Node {
    socket: UdpSocket,
    /// The socket is dual-stack IPv6 (IPv4 peers appear as mapped).
    v6: bool,
    own: NodeId,
    table4: Table,
    table6: Table,
    pending: HashMap<u32, Pending>,
    lookups: Vec<Running>,
    next_lookup: u64,
    torrents: HashMap<u64, Registered>,
    tokens: Tokens,
    store: PeerStore,
    budget: AnswerBudget,
    /// Addresses to join through: bootstrap routers, a torrent's nodes,
    /// the saved table.
    bootstrap: Vec<SocketAddr>,
    next_bootstrap: Instant,
    bootstrap_wait: Duration,
    state_file: Option<PathBuf>,
    next_save: Instant,
    next_maintain: Instant,
    rng: Rng,
    stats: Arc<Stats>,
    commands: Receiver<Command>,
}

/// A fresh token secret; `None` if the system's entropy failed (then the
/// secret is not rotated: never a guessable fallback).
fn secret() -> Option<[u8; 16]> {
    let mut s = [0u8; 16];
    match random_bytes(&mut s) {
        Ok(()) => Some(s),
        Err(e) => {
            log::warn!("dht: token secret not rotated: {e}");
            None
        }
    }
}

impl Node {
    pub(crate) fn new(
        socket: UdpSocket,
        v6: bool,
        commands: Receiver<Command>,
        stats: Arc<Stats>,
        state_file: Option<PathBuf>,
    ) -> Result<Node, EntropyError> {
        let now = Instant::now();
        let saved = state_file.as_deref().and_then(state::load);
        let own = match &saved {
            Some(s) => s.id,
            None => NodeId::random()?,
        };
        let mut first = [0u8; 16];
        random_bytes(&mut first)?;
        let bootstrap: Vec<SocketAddr> = saved
            .map(|s| s.nodes.into_iter().map(|n| n.addr).collect())
            .unwrap_or_default();
        if !bootstrap.is_empty() {
            log::info!("dht: {} nodes from the state file", bootstrap.len());
        }
        Ok(Node {
            socket,
            v6,
            own,
            table4: Table::new(own, now),
            table6: Table::new(own, now),
            pending: HashMap::new(),
            lookups: Vec::new(),
            next_lookup: 1,
            torrents: HashMap::new(),
            tokens: Tokens::new(first, now),
            store: PeerStore::default(),
            budget: AnswerBudget::new(now),
            bootstrap,
            next_bootstrap: now,
            bootstrap_wait: BOOTSTRAP_FIRST,
            state_file,
            next_save: now + SAVE_EVERY,
            next_maintain: now + MAINTAIN_EVERY,
            rng: Rng::seeded()?,
            stats,
            commands,
        })
    }

    pub(crate) fn run(mut self) {
        if let Err(e) = self.socket.set_read_timeout(Some(POLL)) {
            log::warn!("dht: {e}");
            return;
        }
        let mut buf = vec![0u8; krpc::MAX_PACKET + 1];
        let mut next_tick = Instant::now();
        loop {
            match self.socket.recv_from(&mut buf) {
                // A datagram that filled the buffer was longer: dropped.
                Ok((n, from)) if n <= krpc::MAX_PACKET => {
                    self.on_packet(&buf[..n], canonical(from), Instant::now())
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                // ICMP errors of earlier sends surface here; harmless.
                Err(e) => log::trace!("dht: recv: {e}"),
            }
            loop {
                match self.commands.try_recv() {
                    Ok(Command::Shutdown) | Err(TryRecvError::Disconnected) => {
                        self.save();
                        return;
                    }
                    Ok(c) => self.on_command(c, Instant::now()),
                    Err(TryRecvError::Empty) => break,
                }
            }
            let now = Instant::now();
            if now >= next_tick {
                next_tick = now + TICK;
                self.tick(now);
            }
        }
    }

    fn table(&mut self, addr: &SocketAddr) -> &mut Table {
        if addr.is_ipv4() {
            &mut self.table4
        } else {
            &mut self.table6
        }
    }

    fn on_command(&mut self, c: Command, now: Instant) {
        match c {
            Command::Register {
                id,
                info_hash,
                port,
                peers,
            } => {
                self.torrents.insert(
                    id,
                    Registered {
                        info_hash,
                        port,
                        sink: peers,
                        running: false,
                        last_start: None,
                        next: now,
                        want: false,
                        since: now,
                        found_any: false,
                    },
                );
            }
            Command::Unregister(id) => {
                self.torrents.remove(&id);
                self.lookups.retain(|r| r.what != What::Peers(id));
            }
            Command::WantPeers(id) => {
                if let Some(t) = self.torrents.get_mut(&id) {
                    t.want = true;
                }
            }
            Command::AddNodes(list) => {
                for a in list {
                    let a = canonical(a);
                    if (a.is_ipv6() && !self.v6) || self.bootstrap.contains(&a) {
                        continue;
                    }
                    if self.bootstrap.len() >= MAX_BOOTSTRAP {
                        self.bootstrap.remove(0);
                    }
                    self.bootstrap.push(a);
                    // Join through it now rather than at the next round.
                    if let Some(r) = self.lookups.iter_mut().find(|r| r.what == What::Bootstrap) {
                        r.lookup.add(None, a);
                    }
                }
                self.next_bootstrap = now;
            }
            Command::Shutdown => {}
        }
    }

    fn send(&self, addr: SocketAddr, msg: &Msg) {
        let to = match (addr, self.v6) {
            (SocketAddr::V4(a), true) => {
                SocketAddr::new(IpAddr::V6(a.ip().to_ipv6_mapped()), a.port())
            }
            (SocketAddr::V6(_), false) => return,
            _ => addr,
        };
        if let Err(e) = self.socket.send_to(&msg.encode(), to) {
            log::trace!("dht: send to {addr}: {e}");
        }
    }

    fn random_tid(&mut self) -> u32 {
        let mut b = [0u8; 4];
        match random_bytes(&mut b) {
            Ok(()) => u32::from_ne_bytes(b),
            // The OS gave entropy at start; should it fail now, the
            // generator seeded from it still spreads ids.
            Err(_) => self.rng.next_u64() as u32,
        }
    }

    fn query(&mut self, addr: SocketAddr, query: Query, purpose: Purpose, now: Instant) -> bool {
        if self.pending.len() >= MAX_PENDING {
            return false;
        }
        // Unpredictable transaction ids: with the source address check, a
        // forged answer must guess 32 random bits.
        let mut tid = self.random_tid();
        while self.pending.contains_key(&tid) {
            tid = self.random_tid();
        }
        let msg = Msg {
            tid: tid.to_be_bytes().to_vec(),
            body: Body::Query {
                id: self.own,
                query,
                want: Want {
                    v4: true,
                    v6: self.v6,
                },
            },
            read_only: false,
        };
        self.send(addr, &msg);
        self.pending.insert(
            tid,
            Pending {
                addr,
                sent: now,
                purpose,
            },
        );
        true
    }

    fn on_packet(&mut self, data: &[u8], from: SocketAddr, now: Instant) {
        if from.port() == 0 {
            return;
        }
        let msg = match Msg::decode(data) {
            Ok(m) => m,
            Err(e) => {
                log::trace!("dht: from {from}: {e}");
                return;
            }
        };
        match msg.body {
            Body::Query { id, query, want } => self.answer(msg.tid, id, query, want, from, now),
            Body::Response(r) => self.on_response(&msg.tid, r, msg.read_only, from, now),
            Body::Error { code, message } => {
                if let Some(p) = self.take_pending(&msg.tid, from) {
                    log::debug!(
                        "dht: {from} answered error {code}: {}",
                        crate::text::escaped(&message)
                    );
                    if let Purpose::Lookup(lid) = p.purpose {
                        if let Some(r) = self.lookups.iter_mut().find(|r| r.id == lid) {
                            r.lookup.failed(from);
                        }
                    }
                }
            }
        }
    }

    /// The pending query `tid` names, if it went to `from`.
    fn take_pending(&mut self, tid: &[u8], from: SocketAddr) -> Option<Pending> {
        let tid = u32::from_be_bytes(<[u8; 4]>::try_from(tid).ok()?);
        if self.pending.get(&tid)?.addr != from {
            return None;
        }
        self.pending.remove(&tid)
    }

    fn nodes_for(
        &self,
        target: &NodeId,
        want: Want,
        from: &SocketAddr,
        now: Instant,
    ) -> (Vec<NodeAddr>, Vec<NodeAddr>) {
        let (v4, v6) = if want.v4 || want.v6 {
            (want.v4, want.v6)
        } else {
            (from.is_ipv4(), from.is_ipv6())
        };
        let pick = |t: &Table, on: bool| {
            if !on {
                return Vec::new();
            }
            t.closest(target, K, now)
                .into_iter()
                .map(|(id, addr)| NodeAddr { id, addr })
                .collect()
        };
        (pick(&self.table4, v4), pick(&self.table6, v6))
    }

    fn answer(
        &mut self,
        tid: Vec<u8>,
        id: NodeId,
        query: Query,
        want: Want,
        from: SocketAddr,
        now: Instant,
    ) {
        if !self.budget.allow(from.ip(), now) {
            return;
        }
        self.table(&from).queried_by(id, from, now);
        let mut r = Response {
            id: self.own,
            ..Response::default()
        };
        let body = match query {
            Query::Ping => Body::Response(r),
            Query::FindNode { target } => {
                (r.nodes, r.nodes6) = self.nodes_for(&target, want, &from, now);
                Body::Response(r)
            }
            Query::GetPeers { info_hash } => {
                r.token = Some(self.tokens.make(from.ip()).to_vec());
                r.values = self.store.peers(&info_hash, from.is_ipv6(), now);
                if r.values.is_empty() {
                    (r.nodes, r.nodes6) = self.nodes_for(&info_hash.into(), want, &from, now);
                }
                Body::Response(r)
            }
            Query::AnnouncePeer {
                info_hash,
                port,
                implied_port,
                token,
            } => {
                if self.tokens.check(from.ip(), &token) {
                    let port = if implied_port { from.port() } else { port };
                    self.store
                        .announce(info_hash, SocketAddr::new(from.ip(), port), now);
                    Body::Response(r)
                } else {
                    Body::Error {
                        code: 203,
                        message: "bad token".into(),
                    }
                }
            }
            Query::Unknown(_) => Body::Error {
                code: 204,
                message: "method unknown".into(),
            },
        };
        self.send(
            from,
            &Msg {
                tid,
                body,
                read_only: false,
            },
        );
    }

    fn on_response(
        &mut self,
        tid: &[u8],
        r: Response,
        read_only: bool,
        from: SocketAddr,
        now: Instant,
    ) {
        let Some(p) = self.take_pending(tid, from) else {
            return; // not ours, or not from where we sent it
        };
        if !read_only {
            self.table(&from).responded(r.id, from, now);
        }
        let Purpose::Lookup(lid) = p.purpose else {
            return;
        };
        let v6 = self.v6;
        let Some(run) = self.lookups.iter_mut().find(|x| x.id == lid) else {
            return;
        };
        let named = r
            .nodes
            .iter()
            .chain(r.nodes6.iter().filter(|_| v6))
            .map(|n| (n.id, n.addr));
        run.lookup.answered(from, r.id, r.token.clone(), named);
        if let What::Peers(reg) = run.what {
            let room = MAX_FOUND.saturating_sub(run.found);
            // As for PEX: a node may not point rtc at its own host or LAN
            // (nor at multicast, broadcast or port 0).
            let peers: Vec<SocketAddr> = r
                .values
                .into_iter()
                .filter(|a| worth_dialling(a, &from))
                .take(room)
                .collect();
            if !peers.is_empty() {
                run.found += peers.len();
                if let Some(t) = self.torrents.get_mut(&reg) {
                    if !t.found_any {
                        t.found_any = true;
                        log::info!(
                            "dht: first peers for {} after {} ms",
                            t.info_hash,
                            t.since.elapsed().as_millis()
                        );
                    }
                    let _ = t.sink.send(peers);
                }
            }
        }
    }

    /// Where a lookup for `target` starts: the closest known nodes, and
    /// the bootstrap addresses while the tables are thin.
    fn seed(&self, lookup: &mut Lookup, now: Instant) {
        let target = lookup.target();
        for (id, addr) in self
            .table4
            .closest(&target, K, now)
            .into_iter()
            .chain(self.table6.closest(&target, K, now))
        {
            lookup.add(Some(id), addr);
        }
        if self.table4.len() + self.table6.len() < K {
            for a in &self.bootstrap {
                lookup.add(None, *a);
            }
        }
    }

    fn start_lookup(&mut self, target: NodeId, what: What, now: Instant) -> bool {
        if self.lookups.len() >= MAX_LOOKUPS {
            return false;
        }
        let mut lookup = Lookup::new(target);
        self.seed(&mut lookup, now);
        let id = self.next_lookup;
        self.next_lookup += 1;
        self.lookups.push(Running {
            id,
            lookup,
            what,
            started: now,
            found: 0,
        });
        true
    }

    fn tick(&mut self, now: Instant) {
        // Timeouts.
        let expired: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.sent) >= TIMEOUT)
            .map(|(t, _)| *t)
            .collect();
        for tid in expired {
            if let Some(p) = self.pending.remove(&tid) {
                self.table(&p.addr).failed(p.addr, now);
                if let Purpose::Lookup(lid) = p.purpose {
                    if let Some(r) = self.lookups.iter_mut().find(|r| r.id == lid) {
                        r.lookup.failed(p.addr);
                    }
                }
            }
        }

        // Joining: while the tables are empty, look ourselves up through
        // the bootstrap addresses, backing off.
        let empty = self.table4.len() + self.table6.len() == 0;
        let bootstrapping = self.lookups.iter().any(|r| r.what == What::Bootstrap);
        if empty && !bootstrapping && now >= self.next_bootstrap && !self.bootstrap.is_empty() {
            let own = self.own;
            self.start_lookup(own, What::Bootstrap, now);
            self.next_bootstrap = now + self.bootstrap_wait;
            self.bootstrap_wait = (self.bootstrap_wait * 2).min(BOOTSTRAP_MAX);
        } else if !empty {
            self.bootstrap_wait = BOOTSTRAP_FIRST;
        }

        // Torrents due a lookup.
        let due: Vec<(u64, InfoHash)> = self
            .torrents
            .iter()
            .filter(|(_, t)| {
                !t.running
                    && (now >= t.next
                        || (t.want
                            && t.last_start
                                .is_none_or(|s| now.saturating_duration_since(s) >= WANT_SPACING)))
            })
            .map(|(id, t)| (*id, t.info_hash))
            .collect();
        for (id, ih) in due {
            if self.start_lookup(ih.into(), What::Peers(id), now) {
                let t = self.torrents.get_mut(&id).expect("listed above");
                t.running = true;
                t.want = false;
                t.last_start = Some(now);
            }
        }

        // Drive lookups; finish the converged.
        let mut i = 0;
        while i < self.lookups.len() {
            let room = MAX_PENDING.saturating_sub(self.pending.len());
            let run = &mut self.lookups[i];
            let expired = now.saturating_duration_since(run.started) >= LOOKUP_DEADLINE;
            if !expired && room >= ALPHA {
                let (lid, target) = (run.id, run.lookup.target());
                let to = run.lookup.next(now);
                let query = match run.what {
                    What::Peers(_) => Query::GetPeers {
                        info_hash: InfoHash(target.0),
                    },
                    _ => Query::FindNode { target },
                };
                for addr in to {
                    self.query(addr, query.clone(), Purpose::Lookup(lid), now);
                }
            }
            let run = &self.lookups[i];
            if expired || run.lookup.done() {
                let run = self.lookups.swap_remove(i);
                self.finish(run, now);
            } else {
                i += 1;
            }
        }

        if now >= self.next_maintain {
            self.next_maintain = now + MAINTAIN_EVERY;
            self.maintain(now);
        }
        if now >= self.next_save {
            self.next_save = now + SAVE_EVERY;
            self.save();
        }
        self.stats
            .nodes
            .store(self.table4.len() + self.table6.len(), Ordering::Relaxed);
        self.stats.stored.store(self.store.len(), Ordering::Relaxed);
    }

    fn finish(&mut self, run: Running, now: Instant) {
        let What::Peers(reg) = run.what else {
            return;
        };
        let Some(t) = self.torrents.get_mut(&reg) else {
            return;
        };
        t.running = false;
        let reached = run.lookup.answered_any();
        t.next = now + if reached { REANNOUNCE } else { RETRY_EMPTY };
        log::debug!(
            "dht: lookup for {} done in {} ms: {} peers",
            t.info_hash,
            now.saturating_duration_since(run.started).as_millis(),
            run.found
        );
        let (Some(port), ih) = (t.port, t.info_hash) else {
            return;
        };
        for (addr, token) in run.lookup.announce_to() {
            self.query(
                addr,
                Query::AnnouncePeer {
                    info_hash: ih,
                    port,
                    implied_port: false,
                    token,
                },
                Purpose::Announce,
                now,
            );
        }
    }

    fn maintain(&mut self, now: Instant) {
        self.tokens.rotate(now, secret);
        self.store.prune(now);
        let mut chores = self.table4.chores(now, PINGS_PER_ROUND);
        chores.extend(self.table6.chores(now, PINGS_PER_ROUND));
        let mut refreshing = self.lookups.iter().any(|r| r.what == What::Refresh);
        for c in chores {
            match c {
                Chore::Ping(_, addr) => {
                    self.query(addr, Query::Ping, Purpose::Ping, now);
                }
                // One refresh at a time; the other stale buckets come up
                // again at a later round.
                Chore::Refresh(bits) if !refreshing => {
                    let target = self.own.random_in_bucket(bits, &mut self.rng);
                    refreshing = self.start_lookup(target, What::Refresh, now);
                }
                Chore::Refresh(_) => {}
            }
        }
    }

    fn save(&self) {
        let Some(path) = &self.state_file else {
            return;
        };
        let now = Instant::now();
        let nodes: Vec<NodeAddr> = self
            .table4
            .good(now)
            .into_iter()
            .chain(self.table6.good(now))
            .map(|(id, addr)| NodeAddr { id, addr })
            .collect();
        if nodes.is_empty() {
            // Keep what an earlier run saved rather than an empty table.
            return;
        }
        let saved = Saved {
            id: self.own,
            nodes,
        };
        match state::save(path, &saved) {
            Ok(()) => log::debug!(
                "dht: saved {} nodes to {}",
                saved.nodes.len(),
                crate::text::escaped_path(path)
            ),
            Err(e) => log::warn!("dht: cannot save {}: {e}", crate::text::escaped_path(path)),
        }
    }
}
