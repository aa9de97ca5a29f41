#!/usr/bin/python3
"""A mainline DHT swarm of libtorrent sessions on loopback, for rtc's tests and benchmarks.

  lt_dht.py [--nodes N] [--base-port P] [--bootstrap HOST:PORT]...
            [--seed TORRENT --data DATA_PARENT_DIR]
            [--leech MAGNET --out OUT_DIR [--exit-when-finished]]
            [--ready-timeout SECS] [--timeout SECS] [--announce-every SECS]
            [--upload-limit BYTES] [--dht-log]

Runs N libtorrent sessions in this one process, each on its own loopback
address 127.A.B.i (A, B random per process, i = 1..N; Linux routes all of
127/8 to lo) and port (TCP for peers, UDP on the same port for the DHT):
ports P, P+1, ... with --base-port P, else ports the system picks. Own
addresses make them distinct hosts, as DHT nodes on the internet are: a
node that keeps one routing-table entry per IP (rtc, libtorrent by
default) sees each of them. Every session adds every --bootstrap node and
every other session of this process as DHT nodes, so one process forms a
DHT by itself, and a second one joins it with --bootstrap <a node of the
first>. The sessions never contact the internet: no bootstrap routers,
LSD, UPnP or NAT-PMP, every socket bound to its loopback address, TCP only
for peers (no uTP).

--seed: session 0 seeds TORRENT from DATA_PARENT_DIR (checked first) and
announces it to the DHT; no tracker is needed.
--leech: once the DHT is ready, the last session adds MAGNET (usually just
`magnet:?xt=urn:btih:<hex>`) saving into OUT_DIR, finds peers and the
metadata through the DHT, and downloads.

Stdout protocol, one line each, flushed:
  ports P0 P1 ...      every session listens (TCP and UDP), in session order
  nodes IP:P0 ...      the same, with each session's address
  ready                every session's routing table holds >= 1 node (and
                       the --seed torrent is seeding); after --ready-timeout
                       it comes anyway, with a warning on stderr
  first-peer SECS      (--leech) the magnet's torrent has its first peer
  finished SECS        (--leech) every piece is verified
SECS count from the moment the magnet was added (just after `ready`).
Then it runs until SIGTERM/SIGINT (exit 0) or, with --exit-when-finished,
exits 0 right after `finished`; like lt_peer.py it also exits 0 once the
process that started it is gone (a killed test leaves nothing behind). Errors (cannot listen, bad torrent,
incomplete seed data, no `finished` within --timeout) exit non-zero with a
message on stderr.

--dht-log prints DHT events (announces and get_peers received, lookups sent
and their replies, every DHT packet in and out) on stderr, each prefixed
with the index of its session, to debug interop with another DHT
implementation on loopback.

Run it with /usr/bin/python3: that is the interpreter that sees Debian's
python3-libtorrent (2.0.x).
"""

import argparse
import random
import os
import signal
import sys
import time

import libtorrent as lt

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lt_peer  # noqa: E402  (its settings pack)

POLL = 0.05  # seconds between looks at the sessions
# This process's loopback network: 127.A.B.0/24, session i on 127.A.B.(i+1).
NET = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}"


def fail(msg, code=2):
    print(f"lt_dht: {msg}", file=sys.stderr, flush=True)
    # os._exit: tearing sessions down politely can block.
    os._exit(code)


def log(msg):
    print(f"lt_dht: {msg}", file=sys.stderr, flush=True)


def out(line):
    print(line, flush=True)


def parse_node(text):
    """HOST:PORT or [V6]:PORT -> (host, port)."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def make_session(ip, port, dht_log):
    mask = lt.alert_category.error | lt.alert_category.status | lt.alert_category.storage
    if dht_log:
        # dht: announce/get_peers received, bootstrap, replies to a torrent;
        # dht_operation: lookups sent; dht_log: every packet (dht_pkt_alert).
        mask |= lt.alert_category.dht | lt.alert_category.dht_operation | lt.alert_category.dht_log
    # lt_peer.py's loopback test peer (TCP only, no LSD/UPnP/NAT-PMP, every
    # peer on 127.0.0.1, no queueing limits, quick retries), plus the DHT.
    s = lt_peer.settings(ip, port)
    s.update({
        # Outgoing connections from the same address: nothing leaves loopback.
        "outgoing_interfaces": ip,
        # The DHT, on loopback only: no bootstrap routers, and none of the
        # filters that drop or thin out nodes on private addresses.
        "enable_dht": True,
        "dht_bootstrap_nodes": "",
        "dht_restrict_routing_ips": False,
        "dht_restrict_search_ips": False,
        "dht_ignore_dark_internet": False,
        "dht_enforce_node_id": False,
        "dht_prefer_verified_node_ids": False,
        "dht_read_only": False,
        "dht_privacy_lookups": False,
        # Every node is 127.0.0.1: the per-IP limit on incoming DHT packets
        # (5 a second, then blocked for 5 minutes) would block the swarm.
        "dht_block_ratelimit": 1_000_000,
        "dht_block_timeout": 1,
        "dht_upload_rate_limit": 10_000_000,
        "enable_ip_notifier": False,
        "out_enc_policy": int(lt.enc_policy.pe_disabled),
        "alert_mask": int(mask),
        "user_agent": "lt_dht.py/libtorrent-" + lt.__version__,
    })
    return lt.session(s)


def add_torrent(ses, source, save_path):
    """A .torrent file or a magnet link, started, not auto-managed, DHT on."""
    handle, _ = lt_peer.add(ses, source, save_path, dht=True)
    return handle


class Node:
    """One session and what its alerts told."""

    def __init__(self, index, ses):
        self.index = index
        self.ses = ses
        self.tcp = False
        self.udp = False
        self.routing_nodes = 0
        self.checked = {}  # torrent handle -> monotonic time it was checked

    def pump(self, dht_log):
        for a in self.ses.pop_alerts():
            if isinstance(a, lt.listen_failed_alert):
                fail(f"session {self.index} cannot listen: {a.message()}")
            elif isinstance(a, lt.listen_succeeded_alert):
                if a.socket_type == lt.socket_type_t.tcp:
                    self.tcp = True
                elif a.socket_type in (lt.socket_type_t.udp, lt.socket_type_t.utp):
                    self.udp = True
            elif isinstance(a, lt.dht_stats_alert):
                self.routing_nodes = sum(b["num_nodes"] for b in a.routing_table)
            elif isinstance(a, (lt.torrent_error_alert, lt.file_error_alert)):
                fail(f"session {self.index}: {a.message()}")
            elif isinstance(a, lt.torrent_checked_alert):
                self.checked[a.handle] = time.monotonic()
            elif isinstance(a, lt.hash_failed_alert):
                log(f"[{self.index}] {a.message()}")
            elif dht_log and isinstance(a, lt.dht_log_alert):
                pass  # libtorrent's internal narrative: too much
            elif dht_log and isinstance(a, lt.dht_pkt_alert):
                log(f"[{self.index}] dht_pkt {a.message()}")
            elif dht_log and isinstance(
                a,
                (
                    lt.dht_announce_alert,
                    lt.dht_get_peers_alert,
                    lt.dht_reply_alert,
                    lt.dht_outgoing_get_peers_alert,
                    lt.dht_get_peers_reply_alert,
                    lt.dht_bootstrap_alert,
                ),
            ):
                log(f"[{self.index}] {a.what()} {a.message()}")


def on_signal(signum, _frame):
    os._exit(0)


PARENT = os.getppid()


def orphaned():
    """True once the process that started us is gone (a killed test)."""
    return os.getppid() != PARENT


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=5, help="sessions in this process (default 5)")
    p.add_argument(
        "--base-port",
        type=int,
        default=0,
        help="session i listens on BASE_PORT+i (TCP and UDP); 0 (default): ports the system picks",
    )
    p.add_argument(
        "--bootstrap",
        metavar="HOST:PORT",
        type=parse_node,
        action="append",
        default=[],
        help="a DHT node every session adds (repeatable)",
    )
    p.add_argument("--seed", metavar="TORRENT", help="session 0 seeds this .torrent")
    p.add_argument("--data", metavar="DATA_PARENT_DIR", help="where --seed's data is")
    p.add_argument("--leech", metavar="MAGNET", help="the last session downloads this magnet")
    p.add_argument("--out", metavar="OUT_DIR", help="where --leech saves")
    p.add_argument("--exit-when-finished", action="store_true", help="exit 0 after `finished`")
    p.add_argument(
        "--ready-timeout",
        type=float,
        default=20.0,
        help="seconds to wait for every routing table before `ready` anyway (default 20)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds for --seed's check, and for --leech to finish after `ready` (default 300)",
    )
    p.add_argument(
        "--announce-every",
        type=float,
        default=3.0,
        help="force a DHT announce of every torrent this often, seconds, and of the seed once it seeds and at `ready` (default 3; 0: only libtorrent's own schedule)",
    )
    p.add_argument(
        "--upload-limit",
        type=int,
        default=0,
        metavar="BYTES",
        help="the seed's upload limit, bytes a second (default 0: none), for a download that lasts",
    )
    p.add_argument("--dht-log", action="store_true", help="DHT events and packets on stderr")
    args = p.parse_args()
    if args.nodes < 1:
        p.error("--nodes wants at least 1")
    if not 0 <= args.base_port <= 65536 - args.nodes:
        p.error(f"--base-port {args.base_port} does not leave room for {args.nodes} ports")
    if bool(args.seed) != bool(args.data):
        p.error("--seed and --data go together")
    if bool(args.leech) != bool(args.out):
        p.error("--leech and --out go together")
    if args.leech and not args.leech.startswith("magnet:"):
        p.error("--leech wants a magnet: link")
    if args.exit_when_finished and not args.leech:
        p.error("--exit-when-finished needs --leech")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    nodes = []
    for i in range(args.nodes):
        port = args.base_port + i if args.base_port else 0
        nodes.append(Node(i, make_session(f"{NET}.{i + 1}", port, args.dht_log)))

    def pump():
        for n in nodes:
            n.pump(args.dht_log)

    # 1. Every session listens on TCP and on UDP (the DHT's socket).
    deadline = time.monotonic() + 10
    while not all(n.tcp and n.udp for n in nodes):
        pump()
        if time.monotonic() > deadline:
            fail("sessions did not start listening within 10 s")
        time.sleep(0.01)
    ports = [n.ses.listen_port() for n in nodes]
    ips = [f"{NET}.{i + 1}" for i in range(len(nodes))]
    out("ports " + " ".join(str(port) for port in ports))
    out("nodes " + " ".join(f"{ip}:{port}" for ip, port in zip(ips, ports)))

    # 2. The seed starts checking while the DHT forms.
    seed = None
    if args.seed:
        seed = add_torrent(nodes[0].ses, args.seed, args.data)
        if args.upload_limit > 0:
            seed.set_upload_limit(args.upload_limit)

    contacts = list(args.bootstrap) + list(zip(ips, ports))

    def introduce(n):
        own = ports[n.index]
        for host, port in contacts:
            if not (host == ips[n.index] and port == own):
                n.ses.add_dht_node((host, port))

    for n in nodes:
        introduce(n)

    # 3. `ready`: every routing table has a node, and the seed is seeding.
    start = time.monotonic()
    check_deadline = start + args.timeout
    table_deadline = start + args.ready_timeout
    tables_ok = False
    seeding = seed is None
    last_stats = last_intro = 0.0
    while not (seeding and (tables_ok or time.monotonic() > table_deadline)):
        pump()
        now = time.monotonic()
        tables_ok = all(n.routing_nodes > 0 for n in nodes)
        if not tables_ok and now - last_stats >= 0.1:
            for n in nodes:
                n.ses.post_dht_stats()
            last_stats = now
        # A bootstrap node that was not up yet gets pinged again.
        if not tables_ok and now - last_intro >= 1.0 and now - start >= 1.0:
            for n in nodes:
                if n.routing_nodes == 0:
                    introduce(n)
            last_intro = now
        if not seeding:
            st = seed.status()
            if st.errc.value() != 0:
                fail(f"seed torrent error: {st.errc.message()}")
            if st.is_seeding:
                seeding = True
                if args.announce_every > 0:
                    seed.force_dht_announce()
            else:
                checked = nodes[0].checked.get(seed)
                if checked and now > checked + 1.0:
                    fail(
                        f"data of {args.seed} under {args.data} is incomplete "
                        f"({st.total_wanted_done} of {st.total_wanted} bytes verified)"
                    )
                if now > check_deadline:
                    fail(f"timed out checking the data of {args.seed}")
        time.sleep(0.01 if not tables_ok else POLL)
    if not tables_ok:
        empty = [n.index for n in nodes if n.routing_nodes == 0]
        log(
            f"warning: after {args.ready_timeout:g} s, sessions {empty} still have "
            "an empty DHT routing table"
        )
    log(f"ready after {time.monotonic() - start:.3f} s")
    out("ready")
    if seed is not None and args.announce_every > 0:
        seed.force_dht_announce()

    # 4. The leecher, then the long wait.
    handles = [seed] if seed is not None else []
    leech = None
    if args.leech:
        os.makedirs(args.out, exist_ok=True)
        added = time.monotonic()
        leech = add_torrent(nodes[-1].ses, args.leech, args.out)
        handles.append(leech)
        leech_deadline = added + args.timeout
        first_peer = False
    last_announce = time.monotonic()
    last_stats = 0.0
    while True:
        pump()
        now = time.monotonic()
        if leech is not None:
            st = leech.status()
            if st.errc.value() != 0:
                fail(f"leech torrent error: {st.errc.message()}")
            if not first_peer and st.num_peers > 0:
                first_peer = True
                out(f"first-peer {now - added:.3f}")
            if st.is_seeding or st.state == lt.torrent_status.states.finished:
                if not first_peer:
                    out(f"first-peer {now - added:.3f}")
                out(f"finished {now - added:.3f}")
                if args.exit_when_finished:
                    os._exit(0)
                leech = None
            elif now > leech_deadline:
                fail(
                    f"--leech not finished after {args.timeout:g} s: {st.total_wanted_done} "
                    f"of {st.total_wanted} bytes, {st.num_peers} peers, state {st.state}",
                    3,
                )
        if args.announce_every > 0 and now - last_announce >= args.announce_every:
            for h in handles:
                h.force_dht_announce()
            last_announce = now
        # A session whose table is empty (its bootstrap node went away, or
        # was not up by `ready`) keeps trying its contacts.
        if now - last_stats >= 1.0:
            if orphaned():
                os._exit(0)
            for n in nodes:
                if n.routing_nodes == 0:
                    introduce(n)
                n.ses.post_dht_stats()
            last_stats = now
        time.sleep(POLL)


if __name__ == "__main__":
    main()
