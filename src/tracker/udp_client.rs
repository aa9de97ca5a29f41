//! The UDP tracker exchange (BEP 15) over a blocking `UdpSocket`: resolving
//! `udp://` URLs, retransmission with backoff, transaction-id checks and the
//! one-minute connection-id cache. Packet bytes come from `tracker::udp`.

use super::http::{AnnounceRequest, AnnounceResponse};
use super::udp;
use super::Error;
use crate::types::random_u64;
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// BEP 15 retransmits after 15 * 2^n seconds, up to n = 8 (over an hour).
/// rtc keeps the doubling but starts at 2 s and stops at the announce
/// timeout (15 s by default): waits of 2, 4, 8 s, so a dead UDP tracker
/// costs 14 s, not an hour.
const FIRST_WAIT: Duration = Duration::from_secs(2);
/// A connection id may be reused for one minute (BEP 15).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// A receive looks at the stop flag at least this often.
const STOP_POLL: Duration = Duration::from_millis(50);

/// The UDP tracker client: connection ids and a stop flag that ends any
/// exchange in progress within `STOP_POLL`.
#[derive(Default)]
pub struct UdpTrackers {
    connections: HashMap<SocketAddr, (u64, Instant)>,
    stop: Arc<AtomicBool>,
}

/// `udp://host:port[/anything]` -> the tracker's first resolved address.
fn resolve(url: &str) -> Result<SocketAddr, Error> {
    let bad = |detail: String| Error::Udp {
        url: url.into(),
        detail,
    };
    let rest = url
        .strip_prefix("udp://")
        .ok_or_else(|| Error::UnsupportedScheme { url: url.into() })?;
    let hostport = rest.split(['/', '?']).next().unwrap_or("");
    hostport
        .to_socket_addrs()
        .map_err(|e| bad(format!("cannot resolve {hostport}: {e}")))?
        .next()
        .ok_or_else(|| bad(format!("{hostport} has no address")))
}

impl UdpTrackers {
    /// The flag that, once set, fails every exchange of this client.
    pub(crate) fn stop_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stop)
    }

    /// Another client (its own connection ids) stopped by the same flag.
    pub(crate) fn sharing_stop(&self) -> UdpTrackers {
        UdpTrackers {
            connections: HashMap::new(),
            stop: self.stop_flag(),
        }
    }

    /// Announces to one `udp://` tracker (BEP 15), bounded by `timeout`.
    pub fn announce(
        &mut self,
        url: &str,
        req: &AnnounceRequest,
        timeout: Duration,
    ) -> Result<AnnounceResponse, Error> {
        let addr = resolve(url)?;
        let deadline = Instant::now() + timeout;
        let sock = socket_for(&addr, url)?;
        let conn = self.connection(&sock, addr, url, deadline)?;
        let tid = transaction_id()?;
        let key = transaction_id()?;
        let packet = udp::announce_request(conn, tid, req, key);
        exchange(&sock, url, &packet, deadline, &self.stop, |p| {
            udp::parse_announce(p, tid, addr.is_ipv6())
        })
    }

    /// Scrapes one `udp://` tracker for one info hash.
    pub fn scrape(
        &mut self,
        url: &str,
        info_hash: &[u8; 20],
        timeout: Duration,
    ) -> Result<udp::Scrape, Error> {
        let addr = resolve(url)?;
        let deadline = Instant::now() + timeout;
        let sock = socket_for(&addr, url)?;
        let conn = self.connection(&sock, addr, url, deadline)?;
        let tid = transaction_id()?;
        let packet = udp::scrape_request(conn, tid, info_hash);
        exchange(&sock, url, &packet, deadline, &self.stop, |p| {
            udp::parse_scrape(p, tid)
        })
    }

    /// A cached connection id younger than a minute, or a fresh one.
    fn connection(
        &mut self,
        sock: &UdpSocket,
        addr: SocketAddr,
        url: &str,
        deadline: Instant,
    ) -> Result<u64, Error> {
        if let Some(&(id, at)) = self.connections.get(&addr) {
            if at.elapsed() < CONNECTION_LIFETIME {
                return Ok(id);
            }
        }
        let tid = transaction_id()?;
        let at = Instant::now();
        let packet = udp::connect_request(tid);
        let id = exchange(sock, url, &packet, deadline, &self.stop, |p| {
            udp::parse_connect(p, tid)
        })?;
        self.connections.insert(addr, (id, at));
        Ok(id)
    }
}

/// A fresh random transaction id (or announce key). BEP 15 makes it random
/// so that an off-path host cannot forge the tracker's answer.
fn transaction_id() -> Result<u32, Error> {
    Ok(random_u64().map_err(Error::Entropy)? as u32)
}

fn socket_for(addr: &SocketAddr, url: &str) -> Result<UdpSocket, Error> {
    let local: SocketAddr = if addr.is_ipv6() {
        "[::]:0".parse().expect("literal")
    } else {
        "0.0.0.0:0".parse().expect("literal")
    };
    let err = |e: std::io::Error| Error::Udp {
        url: url.into(),
        detail: format!("cannot open a udp socket: {e}"),
    };
    let sock = UdpSocket::bind(local).map_err(err)?;
    // Connected, so only the tracker's datagrams arrive and an ICMP "port
    // unreachable" surfaces as ECONNREFUSED instead of a long wait.
    sock.connect(addr).map_err(err)?;
    Ok(sock)
}

/// Sends `packet` and waits for an answer `parse` accepts, retransmitting
/// with doubling waits until `deadline`. Datagrams with another transaction
/// id are ignored (they may be late answers to an earlier attempt).
fn exchange<T>(
    sock: &UdpSocket,
    url: &str,
    packet: &[u8],
    deadline: Instant,
    stop: &AtomicBool,
    parse: impl Fn(&[u8]) -> Result<T, udp::Error>,
) -> Result<T, Error> {
    let mut wait = FIRST_WAIT;
    let mut buf = vec![0u8; 65536];
    let io = |e: std::io::Error| Error::Udp {
        url: url.into(),
        detail: e.to_string(),
    };
    let stopped = || Error::Udp {
        url: url.into(),
        detail: "stopped".into(),
    };
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::Timeout { url: url.into() });
        }
        if stop.load(Ordering::Acquire) {
            return Err(stopped());
        }
        sock.send(packet).map_err(io)?;
        let until = (now + wait).min(deadline);
        wait *= 2;
        loop {
            if stop.load(Ordering::Acquire) {
                return Err(stopped());
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            sock.set_read_timeout(Some(left.min(STOP_POLL)))
                .map_err(io)?;
            match sock.recv(&mut buf) {
                Ok(n) => match parse(&buf[..n]) {
                    Ok(v) => return Ok(v),
                    Err(udp::Error::WrongTransaction) => continue,
                    Err(udp::Error::Failure(reason)) => {
                        return Err(Error::Refused {
                            url: url.into(),
                            reason,
                        })
                    }
                    Err(e) => {
                        return Err(Error::Protocol {
                            url: url.into(),
                            detail: e.to_string(),
                        })
                    }
                },
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue; // `until` decides when to retransmit
                }
                // ICMP port unreachable shows up as ECONNREFUSED on the
                // next receive: the tracker is not there.
                Err(e) => return Err(io(e)),
            }
        }
    }
}
