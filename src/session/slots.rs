//! Peer slots, as pure code: how the peer cap is shared between peers we
//! dial and peers that dial us, and which connected peer gives up its slot
//! when the cap is reached and someone better may be waiting.
//!
//! Each direction may use at most three quarters of the cap while we
//! download, so a flood of incoming connections cannot lock a leecher out
//! of its swarm and a long candidate list cannot shut out incoming peers.
//! Once complete we only serve: incoming peers may use the whole cap.
//!
//! A connected peer is *useless* once it has had `GRACE` to show interest
//! and either neither side is interested, or no piece data has moved
//! either way for `IDLE`, or it wasted an unchoke lately (the choker's
//! penalty: asked for nothing, or took no data), or it is snubbed. When a slot is needed, the useless peer idle the
//! longest is evicted; a peer that is doing anything is never evicted.

use crate::peer::ConnId;
use std::time::Duration;

/// Time after the handshake before a peer can be judged useless (a peer
/// shows its pieces and interest within a round trip of the handshake).
pub(crate) const GRACE: Duration = Duration::from_secs(3);
/// No payload either way for this long: useless even if interested.
pub(crate) const IDLE: Duration = Duration::from_secs(60);

/// How many peers each direction may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Caps {
    pub total: usize,
    pub inbound: usize,
    pub outbound: usize,
}

pub(crate) fn caps(max_peers: usize, complete: bool) -> Caps {
    let share = max_peers - max_peers / 4;
    Caps {
        total: max_peers,
        inbound: if complete { max_peers } else { share.max(1) },
        outbound: share.max(1),
    }
}

/// What the session knows of a connected peer, for eviction.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SlotPeer {
    pub id: ConnId,
    pub incoming: bool,
    /// Since the handshake.
    pub connected_for: Duration,
    pub am_interested: bool,
    pub peer_interested: bool,
    /// Since piece data last moved either way (or since the handshake).
    pub since_payload: Duration,
    /// It wasted an unchoke (asked for nothing, or took no data) lately,
    /// or it is snubbed (holds pieces and completes none).
    pub penalized: bool,
    /// Piece bytes moved either way on this connection.
    pub payload: u64,
}

/// Connected at least this long before a peer can be judged a squatter.
pub(crate) const SQUAT_AGE: Duration = Duration::from_secs(10);
/// Below this average payload rate (bytes per second either way over the
/// connection), a peer that is not useless is still not worth a slot an
/// arriving peer wants.
pub(crate) const SQUAT_RATE: u64 = 32 * 1024;

/// For an incoming peer at the cap when no peer is useless: the peer of
/// `direction` connected for `SQUAT_AGE` that moved the least data per
/// second, if below `SQUAT_RATE`. Peers that keep slots busy by saying
/// "interested" and asking for a block now and then (and reconnecting
/// before they count as idle) give way to a peer that knocks; a peer
/// doing real work never does. Not used to dial candidates, which may be
/// dead addresses: only for a peer that has already shaken hands.
pub(crate) fn squatter(peers: &[SlotPeer], direction: Option<bool>) -> Option<ConnId> {
    peers
        .iter()
        .filter(|p| direction.is_none_or(|d| p.incoming == d) && p.connected_for >= SQUAT_AGE)
        .map(|p| (p.payload / p.connected_for.as_secs().max(1), p))
        .filter(|(rate, _)| *rate < SQUAT_RATE)
        .min_by_key(|(rate, _)| *rate)
        .map(|(_, p)| p.id)
}

pub(crate) fn is_useless(p: &SlotPeer) -> bool {
    p.connected_for >= GRACE
        && ((!p.am_interested && !p.peer_interested) || p.since_payload >= IDLE || p.penalized)
}

/// Up to `n` peers to evict so that new ones can come in: the useless
/// peers idle the longest, among incoming (`Some(true)`), outgoing
/// (`Some(false)`) or all (`None`) peers.
pub(crate) fn victims(peers: &[SlotPeer], direction: Option<bool>, n: usize) -> Vec<ConnId> {
    let mut useless: Vec<&SlotPeer> = peers
        .iter()
        .filter(|p| direction.is_none_or(|d| p.incoming == d) && is_useless(p))
        .collect();
    useless.sort_by_key(|p| std::cmp::Reverse(p.since_payload));
    useless.into_iter().take(n).map(|p| p.id).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(id: ConnId, incoming: bool, secs: u64, interested: (bool, bool), idle: u64) -> SlotPeer {
        SlotPeer {
            id,
            incoming,
            connected_for: Duration::from_secs(secs),
            am_interested: interested.0,
            peer_interested: interested.1,
            since_payload: Duration::from_secs(idle),
            penalized: false,
            payload: 0,
        }
    }

    #[test]
    fn shares_leave_room_for_the_other_direction() {
        let c = caps(50, false);
        assert_eq!((c.total, c.inbound, c.outbound), (50, 38, 38));
        assert_eq!(caps(50, true).inbound, 50);
        assert_eq!(caps(1, false).inbound, 1);
    }

    #[test]
    fn only_useless_peers_are_evicted_longest_idle_first() {
        let peers = [
            p(1, true, 100, (false, false), 100), // idle, nobody interested
            p(2, true, 100, (true, true), 10),    // trading
            p(3, true, 2, (false, false), 2),     // still in its grace period
            p(4, false, 300, (true, false), 200), // interested but nothing moves
            p(5, true, 100, (false, true), 30),   // wants our data, recently got some
        ];
        assert_eq!(victims(&peers, Some(true), 1), vec![1]);
        assert_eq!(victims(&peers, Some(false), 5), vec![4]);
        assert_eq!(victims(&peers, None, 5), vec![4, 1]);
        assert_eq!(victims(&peers, None, 1), vec![4]);
        assert!(victims(&peers[1..3], None, 5).is_empty());
        let wasted = SlotPeer {
            penalized: true,
            ..peers[1]
        };
        assert_eq!(victims(&[wasted], None, 5), vec![2]);
    }

    #[test]
    fn squatters_give_way_to_a_knocking_peer_workers_never_do() {
        let worker = SlotPeer {
            payload: 100 * 1024 * 1024,
            ..p(1, true, 100, (false, true), 1)
        };
        let idler = SlotPeer {
            payload: 64 * 1024,
            ..p(2, true, 50, (false, true), 1)
        };
        let young = p(3, true, 2, (false, true), 1);
        assert_eq!(squatter(&[worker, idler, young], Some(true)), Some(2));
        assert_eq!(squatter(&[worker, young], Some(true)), None);
    }
}
