# Common tasks; `just --list` shows them. Each is a thin wrapper.

# Install test dependencies and run every check and test (what CI runs).
test:
    scripts/test

# A self-contained demo: local tracker + libtorrent seeder + rtc on loopback.
demo:
    scripts/demo

# Side-by-side benchmark against aria2c and libtorrent; writes md/benchmarks.md.
bench:
    scripts/bench

# Honest transfers timed beside each attack; writes md/benchmarks.md.
attack-bench:
    scripts/attack-bench

# Threads, fds and RSS of one Session with 1, 10 and 50 torrents; writes md/benchmarks.md.
session-bench:
    scripts/session-bench

check:
    cargo fmt --all -- --check
    cargo clippy --all-targets -- -D warnings
