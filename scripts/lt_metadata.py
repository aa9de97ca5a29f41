#!/usr/bin/python3
"""Time to metadata of a libtorrent leecher, for scripts/magnet-bench.

  lt_metadata.py MAGNET HOST:PORT

Adds MAGNET to a loopback-only libtorrent session (the same settings as
lt_peer.py's), connects it to the one peer, and prints `METADATA <seconds>`
(from adding the magnet to libtorrent's metadata_received_alert) and exits
0; exits 2 if no metadata comes within 60 s.
"""

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lt_peer  # noqa: E402  (same settings as the other libtorrent peers)
import libtorrent as lt  # noqa: E402


def main():
    uri, peer = sys.argv[1], sys.argv[2]
    host, _, port = peer.rpartition(":")
    ses = lt_peer.make_session("127.0.0.1", 0)
    with tempfile.TemporaryDirectory() as save:
        atp = lt.parse_magnet_uri(uri)
        atp.save_path = save
        start = time.monotonic()
        h = ses.add_torrent(atp)
        h.connect_peer((host, int(port)))
        while time.monotonic() - start < 60:
            if h.status().has_metadata:
                print(f"METADATA {time.monotonic() - start:.4f}", flush=True)
                os._exit(0)
            ses.wait_for_alert(5)
            ses.pop_alerts()
        print("lt_metadata: no metadata within 60 s", file=sys.stderr, flush=True)
        os._exit(2)


if __name__ == "__main__":
    main()
