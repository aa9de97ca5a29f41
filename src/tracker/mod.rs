//! Trackers: the announcer thread and the HTTP and UDP (`udp_client`)
//! clients it uses, and scraping for `rtc info --scrape`. Owns the tracker
//! list, announce timing and the `started`/`completed`/`stopped` lifecycle.
//! Does not own peers: it only reports addresses to the session.
//!
//! The announcer is its own thread so that a slow or dead tracker never
//! blocks the session or a peer thread. The session talks to it with
//! [`Command`]; it answers with [`Report`]s.

pub mod http;
pub mod udp;
mod udp_client;

pub use udp_client::UdpTrackers;

use crate::text::Escaped;
use crate::types::{EntropyError, InfoHash, PeerId, Rng};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use http::{AnnounceEvent, AnnounceRequest, AnnounceResponse};

/// Default whole-request bound for an announce (connect, send, receive): a
/// tracker that hangs costs at most this long per attempt.
pub const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(15);
/// The `stopped` announce is a courtesy: never hold up exit for long.
pub(crate) const STOPPED_TIMEOUT: Duration = Duration::from_millis(1500);
/// Retry delay after a failed round, doubled per failure up to the interval.
const RETRY_FIRST: Duration = Duration::from_secs(5);
/// Tracker answers larger than this are not tracker answers. Room for a
/// little over 2 MiB of compact peers (about 350,000), which the session
/// takes in linear time and its address book caps.
const MAX_RESPONSE: u64 = 4 * 1024 * 1024;

/// Why an announce (or scrape) failed. Every variant names the tracker's
/// URL as the torrent spells it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The tracker answered with `failure reason`.
    Refused {
        /// The tracker.
        url: String,
        /// Its `failure reason`, as sent.
        reason: String,
    },
    /// An HTTP(S) tracker: connect, timeout, HTTP status, TLS...
    Http {
        /// The tracker.
        url: String,
        /// What went wrong, as a line of text.
        detail: String,
    },
    /// A UDP tracker: the name does not resolve, the socket failed, or the
    /// tracker's port is closed.
    Udp {
        /// The tracker.
        url: String,
        /// What went wrong, as a line of text.
        detail: String,
    },
    /// The answer was not a valid tracker response.
    Protocol {
        /// The tracker.
        url: String,
        /// What was wrong with it.
        detail: String,
    },
    /// A UDP tracker never answered within the announce timeout.
    Timeout {
        /// The tracker.
        url: String,
    },
    /// Neither `http(s)://` nor `udp://`.
    UnsupportedScheme {
        /// The tracker.
        url: String,
    },
    /// No randomness for a UDP transaction id or the tier order.
    Entropy(EntropyError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // URLs come from the torrent and reasons from the tracker: both
        // are printed escaped.
        match self {
            Error::Refused { url, reason } => {
                write!(f, "tracker {} refused: {}", Escaped(url), Escaped(reason))
            }
            Error::Http { url, detail }
            | Error::Udp { url, detail }
            | Error::Protocol { url, detail } => {
                write!(f, "tracker {}: {}", Escaped(url), Escaped(detail))
            }
            Error::UnsupportedScheme { url } => {
                write!(
                    f,
                    "tracker {}: unsupported scheme (http, https and udp work)",
                    Escaped(url)
                )
            }
            Error::Timeout { url } => write!(f, "tracker {}: no answer (timed out)", Escaped(url)),
            Error::Entropy(e) => write!(f, "cannot announce: {e}"),
        }
    }
}

impl std::error::Error for Error {}

/// Transfer counters the announcer reports; the session updates them.
#[derive(Default, Debug)]
pub struct Counters {
    /// Piece bytes sent to peers.
    pub uploaded: AtomicU64,
    /// Verified piece bytes received.
    pub downloaded: AtomicU64,
    /// Bytes still missing.
    pub left: AtomicU64,
}

/// Commands from the session to the announcer thread.
#[derive(Debug)]
pub enum Command {
    /// The last piece verified: announce `completed` now.
    Completed,
    /// More peers wanted (e.g. all known peers failed): announce early, but
    /// never before the tracker's `min interval`.
    WantPeers,
    /// The download is paused: announce `stopped` (if a tracker ever
    /// answered), then nothing until `Resume` or `Shutdown`.
    Pause,
    /// Announce `started` again.
    Resume,
    /// Announce `stopped` (if a tracker ever answered) and end the thread.
    Shutdown,
}

/// What the announcer thread is doing, for its `Stopper`.
const IDLE: u8 = 0;
const ANNOUNCING: u8 = 1;
const COMPLETING: u8 = 2;

/// Ends an announcer's network exchange in progress from another thread:
/// an HTTP request blocked on its socket fails at once (ureq's
/// `Agent::shutdown`), a UDP exchange within 50 ms. The session uses it so
/// that a tracker that hangs never holds up the end of a download.
pub(crate) struct Stopper {
    http: ureq::Agent,
    udp: Arc<AtomicBool>,
    /// `ANNOUNCING` while the announcer is in an ordinary round,
    /// `COMPLETING` in a `completed` one, else `IDLE`.
    busy: Arc<AtomicU8>,
}

impl Stopper {
    /// Whether an ordinary announce is in progress (worthless once the
    /// download ends, so it is aborted at once; a `completed` one is let
    /// finish, within the `stopped` announce's time).
    pub(crate) fn busy(&self) -> bool {
        self.busy.load(Ordering::Acquire) == ANNOUNCING
    }

    /// Fails the exchange in progress, and every later one.
    pub(crate) fn abort(&self) {
        self.udp.store(true, Ordering::Release);
        self.http.clone().shutdown();
    }
}

/// Reports from the announcer thread to the session.
#[derive(Debug)]
pub enum Report {
    /// Addresses one tracker returned.
    Peers(Vec<SocketAddr>),
    /// One full round over every tracker failed; carries the last error.
    RoundFailed { error: Error, first_round: bool },
}

/// Performs one HTTP(S) announce. Blocking, bounded by `timeout`.
pub fn announce_http(
    agent: &ureq::Agent,
    base: &str,
    req: &AnnounceRequest,
    timeout: Duration,
) -> Result<AnnounceResponse, Error> {
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(Error::UnsupportedScheme { url: base.into() });
    }
    let url = http::announce_url(base, req);
    let http_err = |e: ureq::Error| Error::Http {
        url: base.into(),
        detail: e.to_string(),
    };
    let mut resp = agent
        .get(&url)
        .config()
        .timeout_global(Some(timeout))
        .build()
        .call()
        .map_err(http_err)?;
    let body = resp
        .body_mut()
        .with_config()
        .limit(MAX_RESPONSE)
        .read_to_vec()
        .map_err(http_err)?;
    http::parse_response(&body).map_err(|e| match e {
        http::Error::Failure(reason) => Error::Refused {
            url: base.into(),
            reason,
        },
        other => Error::Protocol {
            url: base.into(),
            detail: other.to_string(),
        },
    })
}

/// Stop consulting further tiers once this many peers are known.
const ENOUGH_PEERS: usize = 50;
/// A tier is asked once the tier before it has finished, or this long
/// after that one started, whichever comes first: a black-holed or
/// refusing first tier costs about this much before a later tier's peers
/// are in use, while a tracker that answers at once still decides alone
/// (BEP 12's order).
const TIER_GRACE: Duration = Duration::from_secs(1);
/// Tiers asked at once at most (a magnet's trackers are a tier each).
const MAX_PARALLEL_TIERS: usize = 8;
/// When a tracker gives no `min interval`, early re-announces wait this long.
const DEFAULT_MIN_INTERVAL: Duration = Duration::from_secs(30);

/// One client per tracker protocol, kept for the announcer's lifetime (the
/// UDP one caches connection ids).
pub struct Clients {
    /// For `http://` and `https://` trackers.
    pub http: ureq::Agent,
    /// For `udp://` trackers.
    pub udp: UdpTrackers,
    /// One UDP client per tier asked concurrently (slot 0 is `udp`),
    /// sharing its stop flag.
    tier_udp: Vec<UdpTrackers>,
}

impl Clients {
    /// Fresh clients.
    pub fn new() -> Clients {
        Clients {
            http: agent(),
            udp: UdpTrackers::default(),
            tier_udp: Vec::new(),
        }
    }
}

fn announce_with(
    http: &ureq::Agent,
    udp: &mut UdpTrackers,
    url: &str,
    req: &AnnounceRequest,
    timeout: Duration,
) -> Result<AnnounceResponse, Error> {
    if url.starts_with("udp://") {
        udp.announce(url, req, timeout)
    } else {
        announce_http(http, url, req, timeout)
    }
}

/// What asking one tier came to.
#[derive(Default)]
struct TierOutcome {
    /// Which of its trackers answered, and the intervals it asked for.
    hit: Option<(usize, (Duration, Duration))>,
    last_error: Option<Error>,
}

/// Asks one tier's trackers in order until one answers (BEP 12); reports
/// its peers at once.
fn ask_tier(
    tier: &[String],
    http: &ureq::Agent,
    udp: &mut UdpTrackers,
    req: &AnnounceRequest,
    timeout: Duration,
    reports: &Sender<Report>,
    peers: &AtomicUsize,
) -> TierOutcome {
    let mut out = TierOutcome::default();
    for (i, url) in tier.iter().enumerate() {
        if udp.stop_flag().load(Ordering::Acquire) {
            break; // aborted: no further tracker is asked (or resolved)
        }
        match announce_with(http, udp, url, req, timeout) {
            Ok(resp) => {
                if let Some(w) = &resp.warning {
                    log::warn!("tracker {url}: {w}");
                }
                log::debug!(
                    "tracker {url}: {} peers, interval {:?}",
                    resp.peers.len(),
                    resp.interval
                );
                let min = resp.min_interval.unwrap_or(DEFAULT_MIN_INTERVAL);
                peers.fetch_add(resp.peers.len(), Ordering::Relaxed);
                let _ = reports.send(Report::Peers(resp.peers));
                out.hit = Some((i, (resp.interval, min)));
                return out;
            }
            Err(e) => {
                log::info!("{e}");
                out.last_error = Some(e);
            }
        }
    }
    out
}

impl Default for Clients {
    fn default() -> Self {
        Clients::new()
    }
}

/// Seeders, completed downloads and leechers one tracker reports.
pub type ScrapeCounts = (u64, u64, u64);

/// Scrapes one tracker (HTTP by the `announce` -> `scrape` convention, or
/// UDP) for one info hash.
pub fn scrape(
    clients: &mut Clients,
    url: &str,
    info_hash: &InfoHash,
    timeout: Duration,
) -> Result<ScrapeCounts, Error> {
    if url.starts_with("udp://") {
        let s = clients.udp.scrape(url, &info_hash.0, timeout)?;
        return Ok((s.seeders, s.completed, s.leechers));
    }
    let target = http::scrape_url(url, info_hash).ok_or_else(|| Error::Protocol {
        url: url.into(),
        detail: "this tracker's URL does not support scrape".into(),
    })?;
    let http_err = |e: ureq::Error| Error::Http {
        url: url.into(),
        detail: e.to_string(),
    };
    let body = clients
        .http
        .get(&target)
        .config()
        .timeout_global(Some(timeout))
        .build()
        .call()
        .map_err(http_err)?
        .body_mut()
        .with_config()
        .limit(MAX_RESPONSE)
        .read_to_vec()
        .map_err(http_err)?;
    http::parse_scrape(&body, info_hash).map_err(|e| match e {
        http::Error::Failure(reason) => Error::Refused {
            url: url.into(),
            reason,
        },
        other => Error::Protocol {
            url: url.into(),
            detail: other.to_string(),
        },
    })
}

/// Fisher-Yates (BEP 12 shuffles each tier once).
fn shuffle<T>(v: &mut [T], rng: &mut Rng) {
    for i in (1..v.len()).rev() {
        v.swap(i, rng.below(i + 1));
    }
}

/// Shuffles every tier, once: `done` records that it happened.
fn shuffle_tiers(tiers: &mut [Vec<String>], done: &mut bool) -> Result<(), Error> {
    if !*done {
        let mut rng = Rng::seeded().map_err(Error::Entropy)?;
        for tier in tiers {
            shuffle(tier, &mut rng);
        }
        *done = true;
    }
    Ok(())
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(5)))
        .user_agent(concat!("rtc/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// What the announcer thread needs, moved into it at spawn.
pub struct Announcer {
    /// Tracker URLs by tier (BEP 12).
    pub tiers: Vec<Vec<String>>,
    /// The torrent.
    pub info_hash: InfoHash,
    /// Our peer id.
    pub peer_id: PeerId,
    /// The port we listen on.
    pub port: u16,
    /// Read at each announce.
    pub counters: Arc<Counters>,
    /// Bound on one announce; `ANNOUNCE_TIMEOUT` by default.
    pub timeout: Duration,
    /// Start paused: announce nothing until `Command::Resume`.
    pub paused: bool,
}

impl Announcer {
    /// Runs the announce loop on a new thread until [`Command::Shutdown`] or
    /// until the command sender is dropped. The [`Stopper`] ends an
    /// exchange in progress.
    pub(crate) fn spawn(
        self,
        commands: Receiver<Command>,
        reports: Sender<Report>,
    ) -> std::io::Result<(std::thread::JoinHandle<()>, Stopper)> {
        let clients = Clients::new();
        let busy = Arc::new(AtomicU8::new(IDLE));
        let stopper = Stopper {
            http: clients.http.clone(),
            udp: clients.udp.stop_flag(),
            busy: Arc::clone(&busy),
        };
        let thread = std::thread::Builder::new()
            .name("rtc-tracker".into())
            .spawn(move || self.run(clients, &busy, commands, reports))?;
        Ok((thread, stopper))
    }

    fn request(&self, event: Option<AnnounceEvent>) -> AnnounceRequest {
        AnnounceRequest {
            info_hash: self.info_hash,
            peer_id: self.peer_id,
            port: self.port,
            uploaded: self.counters.uploaded.load(Ordering::Relaxed),
            downloaded: self.counters.downloaded.load(Ordering::Relaxed),
            left: self.counters.left.load(Ordering::Relaxed),
            event,
            numwant: 200,
        }
    }

    /// One round (BEP 12): each tier's trackers in (shuffled) order until
    /// one answers, which moves to the front of its tier. Tiers run on
    /// threads of their own, each starting when the one before it has
    /// finished or `TIER_GRACE` after it started, so a dead tier delays
    /// the next by about a second, not by its timeouts. Unlike plain BEP
    /// 12, later tiers are consulted until `ENOUGH_PEERS` are known, so
    /// backup trackers add to a thin swarm. Peers are reported as each
    /// tracker answers. Returns the smallest intervals any tracker asked
    /// for, or the last error if none answered.
    fn round(
        &mut self,
        clients: &mut Clients,
        event: Option<AnnounceEvent>,
        timeout: Duration,
        reports: &Sender<Report>,
    ) -> Result<(Duration, Duration), Error> {
        let req = self.request(event);
        let peers = AtomicUsize::new(0);
        let Clients {
            http,
            udp,
            tier_udp,
        } = clients;
        while tier_udp.len() + 1 < self.tiers.len() {
            tier_udp.push(udp.sharing_stop());
        }
        let udps = std::iter::once(&mut *udp).chain(tier_udp.iter_mut());
        let outcomes: Vec<(usize, TierOutcome)> = std::thread::scope(|s| {
            let mut running: Vec<(usize, std::thread::ScopedJoinHandle<'_, TierOutcome>)> =
                Vec::new();
            let mut done = Vec::new();
            for (t, (tier, udp)) in self.tiers.iter().zip(udps).enumerate() {
                if peers.load(Ordering::Relaxed) >= ENOUGH_PEERS
                    || udp.stop_flag().load(Ordering::Acquire)
                {
                    break;
                }
                // At most MAX_PARALLEL_TIERS at once: wait for the oldest.
                if running.len() >= MAX_PARALLEL_TIERS {
                    let (t0, h) = running.remove(0);
                    done.push((t0, h.join().unwrap_or_default()));
                }
                let (finished_tx, finished_rx) = crossbeam_channel::bounded::<()>(0);
                let (http, req, peers) = (&*http, &req, &peers);
                let spawned = std::thread::Builder::new()
                    .name("rtc-tracker-tier".into())
                    .spawn_scoped(s, move || {
                        let _finished = finished_tx; // dropped when done
                        ask_tier(tier, http, udp, req, timeout, reports, peers)
                    });
                match spawned {
                    Ok(h) => {
                        running.push((t, h));
                        // The next tier waits for this one, or the grace.
                        let _ = finished_rx.recv_timeout(TIER_GRACE);
                    }
                    Err(e) => {
                        log::warn!("tracker: cannot start a thread for tier {t}: {e}");
                        break;
                    }
                }
            }
            for (t, h) in running {
                done.push((t, h.join().unwrap_or_default()));
            }
            done
        });
        let mut answered: Option<(Duration, Duration)> = None;
        let mut last = None;
        for (t, o) in outcomes {
            if let Some((i, (interval, min))) = o.hit {
                let hit = self.tiers[t].remove(i);
                self.tiers[t].insert(0, hit);
                answered = Some(match answered {
                    None => (interval, min),
                    Some((a, b)) => (a.min(interval), b.min(min)),
                });
            }
            if o.last_error.is_some() {
                last = o.last_error;
            }
        }
        answered.ok_or(last.unwrap_or(Error::UnsupportedScheme { url: String::new() }))
    }

    /// The courtesy `stopped` announce, briefly.
    fn stopped(&mut self, clients: &mut Clients, reports: &Sender<Report>) {
        let timeout = STOPPED_TIMEOUT.min(self.timeout);
        let _ = self.round(clients, Some(AnnounceEvent::Stopped), timeout, reports);
    }

    fn run(
        mut self,
        mut clients: Clients,
        busy: &AtomicU8,
        commands: Receiver<Command>,
        reports: Sender<Report>,
    ) {
        // Without randomness for the tier order a round fails like any
        // other (reported, retried with backoff): announcing in an order
        // every rtc shares would pile every client onto the first tracker.
        let mut shuffled = false;
        if self.paused {
            loop {
                match commands.recv() {
                    Ok(Command::Resume) => break,
                    Ok(Command::Shutdown) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        }
        let mut event = Some(AnnounceEvent::Started);
        let mut ever_answered = false;
        let mut first_round = true;
        let mut retry = RETRY_FIRST;
        loop {
            let started = std::time::Instant::now();
            // A `completed` announce is worth finishing at shutdown (it
            // is how a download that just ended tells the tracker).
            let phase = if event == Some(AnnounceEvent::Completed) {
                COMPLETING
            } else {
                ANNOUNCING
            };
            busy.store(phase, Ordering::Release);
            let outcome = match shuffle_tiers(&mut self.tiers, &mut shuffled) {
                Ok(()) => self.round(&mut clients, event, self.timeout, &reports),
                Err(e) => Err(e),
            };
            busy.store(IDLE, Ordering::Release);
            let (wait, min_wait) = match outcome {
                Ok(intervals) => {
                    ever_answered = true;
                    event = None;
                    retry = RETRY_FIRST;
                    intervals
                }
                Err(error) => {
                    if reports
                        .send(Report::RoundFailed { error, first_round })
                        .is_err()
                    {
                        return;
                    }
                    let wait = retry;
                    retry = (retry * 2).min(Duration::from_secs(300));
                    (wait, wait)
                }
            };
            first_round = false;
            // Wait for the interval, a command, or the session going away.
            loop {
                let left = wait.saturating_sub(started.elapsed());
                match commands.recv_timeout(left) {
                    Err(RecvTimeoutError::Timeout) => break,
                    Ok(Command::Completed) => {
                        event = Some(AnnounceEvent::Completed);
                        break;
                    }
                    Ok(Command::WantPeers) => {
                        if started.elapsed() >= min_wait {
                            break;
                        }
                    }
                    Ok(Command::Pause) => {
                        if ever_answered {
                            self.stopped(&mut clients, &reports);
                        }
                        // Nothing until resumed; a resume starts afresh.
                        loop {
                            match commands.recv() {
                                Ok(Command::Resume) => break,
                                Ok(Command::Shutdown) | Err(_) => return,
                                Ok(_) => {}
                            }
                        }
                        event = Some(AnnounceEvent::Started);
                        ever_answered = false;
                        break;
                    }
                    Ok(Command::Resume) => {}
                    Ok(Command::Shutdown) | Err(RecvTimeoutError::Disconnected) => {
                        if ever_answered {
                            self.stopped(&mut clients, &reports);
                        }
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_are_shuffled_once_and_keep_their_trackers() {
        let urls: Vec<String> = (0..20).map(|i| format!("udp://t{i}:1")).collect();
        let mut tiers = vec![urls.clone(), vec!["http://only/announce".into()]];
        let mut done = false;
        shuffle_tiers(&mut tiers, &mut done).unwrap();
        assert!(done);
        let once = tiers.clone();
        shuffle_tiers(&mut tiers, &mut done).unwrap();
        assert_eq!(
            tiers, once,
            "a later round keeps the order (and who answered first)"
        );
        let (mut got, mut want) = (tiers[0].clone(), urls);
        got.sort();
        want.sort();
        assert_eq!(got, want);
        assert_eq!(tiers[1], ["http://only/announce"]);
    }
}
