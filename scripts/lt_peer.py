#!/usr/bin/python3
"""A libtorrent peer on loopback, for rtc's integration tests and benchmark.

  lt_peer.py seed  TORRENT DATA_PARENT_DIR --port P [--bind ADDR] [--seed-mode]
                   [--also TORRENT]...
  lt_peer.py leech TORRENT|MAGNET OUT_DIR --port P [--bind ADDR]
                   [--peer HOST:PORT]... [--timeout SECS] [--download-limit B]

seed: checks the data under DATA_PARENT_DIR, waits (briefly) for the first
tracker reply if the torrent names a tracker, prints `READY <port>` and then
seeds until it is killed. With --seed-mode it skips the up-front check
(libtorrent's seed_mode: each piece is hashed when first requested), for
torrents too big to check at every start. Each --also TORRENT is seeded
too, from the same DATA_PARENT_DIR, in the same libtorrent session (one
port); READY comes once every torrent is seeding.

leech: downloads into OUT_DIR from the torrent's trackers and every --peer,
or, given a `magnet:` link instead of a torrent file, first fetches the
metadata (BEP 9) from the link's trackers and peers (x.pe) and every --peer;
prints `DONE <seconds>` once every piece is verified and exits 0. Any error,
or no completion within --timeout seconds, exits non-zero with a message on
stderr.

Run it with /usr/bin/python3: that is the interpreter that sees Debian's
python3-libtorrent (2.0.x). TCP only; no DHT, LSD, UPnP, NAT-PMP or uTP.
"""

import argparse
import ipaddress
import os
import signal
import sys
import time

import libtorrent as lt

POLL = 0.05  # seconds between looks at the session


def fail(msg, code=2):
    print(f"lt_peer: {msg}", file=sys.stderr, flush=True)
    # os._exit: tearing the session down politely can block on trackers.
    os._exit(code)


def log(msg):
    print(f"lt_peer: {msg}", file=sys.stderr, flush=True)


def listen_spec(bind, port):
    addr = ipaddress.ip_address(bind)
    host = f"[{bind}]" if addr.version == 6 else bind
    return f"{host}:{port}"


def parse_peer(text):
    """HOST:PORT or [V6]:PORT -> (host, port)."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


# --encryption: how a leecher opens connections (it always accepts both).
OUT_ENCRYPTION = {
    # Plain handshakes only: no reconnect with plaintext-only peers.
    "plain": {"out_enc_policy": int(lt.enc_policy.pe_disabled)},
    # Always open with MSE, offering plaintext and RC4 (libtorrent's own
    # default, pe_enabled, sometimes opens plain instead: not testable).
    "mse": {
        "out_enc_policy": int(lt.enc_policy.pe_forced),
        "allowed_enc_level": int(lt.enc_level.pe_both),
    },
    # MSE with RC4 only: every byte of the connection encrypted.
    "rc4": {
        "out_enc_policy": int(lt.enc_policy.pe_forced),
        "allowed_enc_level": int(lt.enc_level.pe_rc4),
        "prefer_rc4": True,
    },
}


def settings(bind, port, upload_limit=0, download_limit=0):
    """The settings pack of a loopback test peer (lt_dht.py builds on it)."""
    return {
        "listen_interfaces": listen_spec(bind, port),
        # Loopback only: nothing that looks for peers by itself.
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "dht_bootstrap_nodes": "",
        # TCP only.
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        "enable_outgoing_tcp": True,
        "enable_incoming_tcp": True,
        # Every test peer is 127.0.0.1 (or ::1).
        "allow_multiple_connections_per_ip": True,
        "no_connect_privileged_ports": False,
        # Accept encrypted or plain handshakes; how to open: OUT_ENCRYPTION.
        "in_enc_policy": int(lt.enc_policy.pe_enabled),
        # The torrent is not auto-managed; no queueing limits anyway.
        "active_downloads": -1,
        "active_seeds": -1,
        "active_checking": -1,
        "active_limit": -1,
        # No rate limits, every peer unchoked, deep queues: loopback speed.
        "upload_rate_limit": upload_limit,
        "download_rate_limit": download_limit,
        "unchoke_slots_limit": -1,
        "send_buffer_watermark": 16 * 1024 * 1024,
        "send_buffer_low_watermark": 1024 * 1024,
        "send_buffer_watermark_factor": 200,
        "max_queued_disk_bytes": 16 * 1024 * 1024,
        "max_out_request_queue": 1500,
        "max_allowed_in_request_queue": 4000,
        "hashing_threads": 2,
        "connections_limit": 500,
        # Tests start and stop peers quickly: retry soon, give up soon.
        "min_reconnect_time": 1,
        "peer_connect_timeout": 5,
        "smooth_connects": False,
        "connection_speed": 200,
        # Peers added by connect_peer() are dialled on the next tick.
        "tick_interval": 100,
        "stop_tracker_timeout": 1,
        "tracker_completion_timeout": 10,
        "tracker_receive_timeout": 5,
        "announce_to_all_trackers": True,
        "announce_to_all_tiers": True,
        "alert_mask": int(
            lt.alert_category.error
            | lt.alert_category.status
            | lt.alert_category.tracker
            | lt.alert_category.storage
        ),
        "user_agent": "lt_peer.py/libtorrent-" + lt.__version__,
    }


def make_session(bind, port, upload_limit=0, encryption="plain", download_limit=0):
    s = settings(bind, port, upload_limit, download_limit)
    s.update(OUT_ENCRYPTION[encryption])
    ses = lt.session(s)
    if upload_limit or download_limit:
        # libtorrent exempts local-network peers from rate limits; put every
        # address in the global class so the limit applies on loopback.
        f = lt.ip_filter()
        everyone = 1 << lt.session.global_peer_class_id
        f.add_rule("0.0.0.0", "255.255.255.255", everyone)
        f.add_rule("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", everyone)
        ses.set_peer_class_filter(f)
    return ses


def add(ses, torrent, save_path, seed_mode=False, dht=False):
    """Adds a torrent file, or a magnet link (then ti is None), started and
    not auto-managed; it uses the DHT only with `dht` (lt_dht.py)."""
    if torrent.startswith("magnet:"):
        try:
            atp = lt.parse_magnet_uri(torrent)
        except RuntimeError as e:
            fail(f"cannot parse {torrent}: {e}")
        ti = None
    else:
        try:
            ti = lt.torrent_info(torrent)
        except RuntimeError as e:
            fail(f"cannot load {torrent}: {e}")
        atp = lt.add_torrent_params()
        atp.ti = ti
    atp.save_path = save_path
    atp.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
    atp.flags |= lt.torrent_flags.disable_lsd
    if dht:
        atp.flags &= ~lt.torrent_flags.disable_dht
    else:
        atp.flags |= lt.torrent_flags.disable_dht
    if seed_mode:
        atp.flags |= lt.torrent_flags.seed_mode
    try:
        h = ses.add_torrent(atp)
    except RuntimeError as e:
        fail(f"cannot add {torrent}: {e}")
    return h, ti


class Alerts:
    """Drains the alert queue; fatal alerts end the process."""

    def __init__(self, ses):
        self.ses = ses
        self.tracker_replies = 0
        self.tracker_errors = 0
        self.listening = False
        self.checked = {}  # torrent handle -> monotonic time it was checked

    def pump(self):
        for a in self.ses.pop_alerts():
            if isinstance(a, lt.listen_failed_alert):
                fail(f"cannot listen: {a.message()}")
            elif isinstance(a, lt.listen_succeeded_alert):
                self.listening = True
            elif isinstance(a, (lt.torrent_error_alert, lt.file_error_alert)):
                fail(a.message())
            elif isinstance(a, lt.torrent_checked_alert):
                self.checked[a.handle] = time.monotonic()
            elif isinstance(a, lt.hash_failed_alert):
                log(a.message())
            elif isinstance(a, lt.tracker_reply_alert):
                self.tracker_replies += 1
            elif isinstance(a, lt.tracker_error_alert):
                self.tracker_errors += 1
                log(a.message())


def on_signal(signum, _frame):
    os._exit(0)


PARENT = os.getppid()


def orphaned():
    """True once the process that started us is gone (a killed test)."""
    return os.getppid() != PARENT


def seed(args):
    ses = make_session(args.bind, args.port, args.upload_limit)
    alerts = Alerts(ses)
    torrents = [args.torrent] + args.also
    added = [add(ses, t, args.data_parent_dir, args.seed_mode) for t in torrents]
    deadline = time.monotonic() + args.timeout
    waiting = list(added)
    while waiting:
        alerts.pump()
        for h, ti in list(waiting):
            st = h.status()
            if st.errc.value() != 0:
                fail(f"torrent error ({ti.name()}): {st.errc.message()}")
            if st.is_seeding:
                waiting.remove((h, ti))
                continue
            checked = alerts.checked.get(h)
            if checked and time.monotonic() > checked + 1.0:
                # Checked, and still not a seed: the data is not all there.
                fail(
                    f"data of {ti.name()} under {args.data_parent_dir} is incomplete "
                    f"({st.total_wanted_done} of {st.total_wanted} bytes verified)"
                )
        if not waiting:
            break
        if time.monotonic() > deadline:
            fail(f"timed out checking the data ({len(waiting)} torrents not seeding)")
        if orphaned():
            os._exit(0)
        time.sleep(POLL)
    # Start the leechers only once the tracker knows about us, so their
    # first announce lists this seeder. A tracker that never answers (or an
    # IPv6 bind with an IPv4 tracker) only costs a short wait.
    tracked = [h for h, ti in added if list(ti.trackers())]
    if tracked:
        for h in tracked:
            h.force_reannounce(0, -1)
        wait_until = time.monotonic() + 5
        while time.monotonic() < wait_until:
            alerts.pump()
            if alerts.tracker_replies + alerts.tracker_errors >= len(tracked):
                break
            time.sleep(POLL)
    print(f"READY {ses.listen_port()}", flush=True)
    while not orphaned():
        alerts.pump()
        time.sleep(0.5)
    os._exit(0)


def leech(args):
    os.makedirs(args.out_dir, exist_ok=True)
    ses = make_session(
        args.bind, args.port, encryption=args.encryption, download_limit=args.download_limit
    )
    alerts = Alerts(ses)
    start = time.monotonic()
    h, ti = add(ses, args.torrent, args.out_dir)
    deadline = start + args.timeout
    last_connect = 0.0
    while True:
        alerts.pump()
        st = h.status()
        if st.errc.value() != 0:
            fail(f"torrent error: {st.errc.message()}")
        if st.is_seeding:
            break
        now = time.monotonic()
        if orphaned():
            fail("parent process went away", 4)
        if now > deadline:
            fail(
                f"timed out after {args.timeout}s: {st.total_wanted_done} of "
                f"{st.total_wanted} bytes, {st.num_peers} peers, state {st.state}",
                3,
            )
        # (Re)introduce the given peers while none is connected: a peer that
        # was not listening yet is tried again a second later.
        if args.peer and st.num_peers == 0 and now - last_connect >= 1.0:
            for host, port in args.peer:
                h.connect_peer((host, port))
            last_connect = now
        time.sleep(POLL)
    print(f"DONE {time.monotonic() - start:.3f}", flush=True)
    os._exit(0)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    for mode, third in (("seed", "data_parent_dir"), ("leech", "out_dir")):
        sp = sub.add_parser(mode)
        sp.add_argument("torrent")
        sp.add_argument(third)
        sp.add_argument("--port", type=int, required=True)
        sp.add_argument("--bind", default="127.0.0.1")
        sp.add_argument(
            "--timeout",
            type=float,
            default=300.0,
            help="seconds (leech: to finish; seed: to check the data)",
        )
        if mode == "leech":
            sp.add_argument("--peer", type=parse_peer, action="append", default=[])
            sp.add_argument("--encryption", choices=sorted(OUT_ENCRYPTION), default="plain")
            sp.add_argument(
                "--download-limit",
                type=int,
                default=0,
                help="bytes per second (0: unlimited), to keep a leecher leeching",
            )
        else:
            sp.add_argument(
                "--upload-limit",
                type=int,
                default=0,
                help="bytes per second (0: unlimited), to make a slow seeder",
            )
            sp.add_argument(
                "--also",
                metavar="TORRENT",
                action="append",
                default=[],
                help="seed this torrent too (data under the same DATA_PARENT_DIR)",
            )
            sp.add_argument(
                "--seed-mode",
                action="store_true",
                help="trust the data without checking it first (libtorrent seed_mode)",
            )
    args = p.parse_args()
    try:
        ipaddress.ip_address(args.bind)
    except ValueError:
        p.error(f"--bind wants an IP address, got {args.bind!r}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.mode == "seed":
        seed(args)
    else:
        leech(args)


if __name__ == "__main__":
    main()
