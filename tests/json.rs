//! `--json` (md/json.md) on real runs: a download of a multi-file torrent
//! from libtorrent, a seed stopped with Ctrl-C, a dead tracker, a bad
//! torrent, a cancelled download, and `info`, `verify`, `create`. Every
//! line of stdout must parse as JSON, match the schema, and the events
//! must come in the promised order; the exit codes stay as documented.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BOUND: Duration = Duration::from_secs(60);

/// Keys each event must have (besides `v` and `event`).
fn required(event: &str) -> &'static [&'static str] {
    const TORRENT: &[&str] = &[
        "info_hash",
        "name",
        "size",
        "piece_length",
        "pieces",
        "private",
        "files",
        "trackers",
        "comment",
    ];
    match event {
        "start" => &["info_hash", "metadata"],
        "metadata" => TORRENT,
        "checked" => &["info_hash", "pieces_ok", "pieces_total"],
        "peer" => &["info_hash", "action", "addr", "peers"],
        "tracker_error" => &["info_hash", "message"],
        "progress" => &[
            "info_hash",
            "verified_bytes",
            "total_bytes",
            "wanted_bytes",
            "wanted_verified_bytes",
            "pieces_done",
            "pieces_total",
            "download_rate",
            "uploaded_bytes",
            "upload_rate",
            "peers",
            "eta_secs",
            "elapsed_secs",
        ],
        "file_done" => &["info_hash", "index", "path", "length"],
        "done" => &["info_hash", "total_bytes", "uploaded_bytes", "elapsed_secs"],
        "seeding" => &["info_hash"],
        "stopped" => &[
            "info_hash",
            "total_bytes",
            "downloaded_bytes",
            "uploaded_bytes",
            "elapsed_secs",
            "peer_sources",
        ],
        "error" => &["code", "message"],
        "info" => TORRENT,
        "verify" => &[
            "info_hash",
            "pieces_ok",
            "pieces_total",
            "verified_bytes",
            "total_bytes",
            "files",
            "missing",
        ],
        "created" => &["path", "info_hash", "name", "size", "pieces", "files"],
        "magnet" => &["uri"],
        other => panic!("unknown event {other:?}"),
    }
}

/// Parses every line of `stdout`: each must be a JSON object with
/// `"v": 1`, a known `event` and that event's keys.
fn parse(stdout: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(stdout).expect("stdout is UTF-8");
    assert!(text.is_empty() || text.ends_with('\n'), "unterminated line");
    text.lines()
        .map(|line| {
            let v: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
            assert_eq!(v["v"], 1, "{line}");
            let event = v["event"]
                .as_str()
                .unwrap_or_else(|| panic!("no event: {line}"));
            for key in required(event) {
                assert!(v.get(key).is_some(), "{event} without {key}: {line}");
            }
            if event == "start" && v["metadata"] == true {
                for key in required("metadata") {
                    assert!(v.get(key).is_some(), "start without {key}: {line}");
                }
                assert!(v["selection"].is_array(), "{line}");
            }
            v
        })
        .collect()
}

fn events(lines: &[Value]) -> Vec<&str> {
    lines.iter().map(|l| l["event"].as_str().unwrap()).collect()
}

/// The order md/json.md promises for a download of `files` files.
fn check_download(lines: &[Value], files: usize, ends: &[&str]) {
    let ev = events(lines);
    assert_eq!(ev[0], "start", "{ev:?}");
    let tail: Vec<&str> = ev[ev.len() - ends.len()..].to_vec();
    assert_eq!(tail, ends, "{ev:?}");
    let ih = lines[0]["info_hash"].as_str().unwrap();
    assert_eq!(ih.len(), 40);
    for l in lines {
        if l["event"] != "error" {
            assert_eq!(l["info_hash"], ih, "{l}");
        }
    }
    let done_at = ev.iter().position(|&e| e == "done").expect("a done line");
    let file_done: Vec<(usize, u64)> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l["event"] == "file_done")
        .map(|(i, l)| (i, l["index"].as_u64().unwrap()))
        .collect();
    let indices: BTreeSet<u64> = file_done.iter().map(|&(_, f)| f).collect();
    assert_eq!(indices.len(), file_done.len(), "a file_done twice: {ev:?}");
    assert_eq!(indices, (0..files as u64).collect(), "{ev:?}");
    assert!(file_done.iter().all(|&(i, _)| i < done_at), "{ev:?}");
    assert_eq!(ev.iter().filter(|&&e| e == "done").count(), 1);
    // The stream ends well with the final counts just before its end.
    let before_end = &lines[lines.len() - 2];
    assert_eq!(before_end["event"], "progress", "{ev:?}");
    assert_eq!(
        before_end["wanted_verified_bytes"],
        before_end["wanted_bytes"]
    );
    assert_eq!(before_end["eta_secs"], 0);
}

/// A torrent of a directory of three files (one ends mid-piece).
fn setup(announce: Option<&str>) -> DirTorrent {
    DirTorrent::new(
        &[
            ("a.bin", 1_500_000, 1),
            ("b.bin", 700_000, 2),
            ("sub/c.bin", 2 * 1024 * 1024, 3),
        ],
        announce,
        18,
    )
}

/// `rtc --json -q --port FREE ARGS -o OUT TARGET`.
fn json_cmd(args: &[&str], out: &Path, target: &std::ffi::OsStr) -> Command {
    let mut cmd = rtc_cmd();
    cmd.args(["--json", "-q", "--port"])
        .arg(free_port().to_string())
        .args(args)
        .arg("-o")
        .arg(out)
        .arg(target);
    cmd
}

/// [`json_cmd`] run to its end, bounded.
fn rtc_json(args: &[&str], out: &Path, target: &std::ffi::OsStr) -> std::process::Output {
    run_bounded(&mut json_cmd(args, out, target), BOUND)
}

/// [`json_cmd`] started, its stdout piped.
fn spawn_json(args: &[&str], out: &Path, target: &std::ffi::OsStr) -> std::process::Child {
    json_cmd(args, out, target)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn a_download_from_libtorrent_is_a_well_formed_stream() {
    let s = setup(None);
    let seeder = s.lt_seeder();
    let out = s.dir.path().join("out");
    let peer = seeder.addr().to_string();
    let o = rtc_json(
        &["--seed-time", "0", "--peer", &peer],
        &out,
        s.torrent.as_os_str(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        o.stderr.is_empty(),
        "-q: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_same_tree(&s.content, &out.join("dir"));
    let lines = parse(&o.stdout);
    check_download(&lines, 3, &["done"]);
    let start = &lines[0];
    assert_eq!(start["metadata"], true);
    assert!(!events(&lines).contains(&"metadata"));
    assert_eq!(start["info_hash"], info_hash_of(&s.torrent));
    assert_eq!(start["size"], 1_500_000 + 700_000 + 2 * 1024 * 1024);
    assert_eq!(start["files"][2]["path"], "dir/sub/c.bin");
    assert_eq!(start["files"][2]["index"], 2);
    assert_eq!(start["selection"], serde_json::json!([0, 1, 2]));
    let done = lines.last().unwrap();
    assert_eq!(done["downloaded_bytes"], start["size"]);
    assert_eq!(done["peer_sources"]["manual"], 1);
    for l in lines.iter().filter(|l| l["event"] == "file_done") {
        let i = l["index"].as_u64().unwrap() as usize;
        assert_eq!(l["path"], start["files"][i]["path"]);
    }
    assert!(events(&lines).contains(&"peer"));
}

/// A magnet: `start` knows only the info hash; `metadata` brings the
/// torrent before any `file_done`.
#[test]
fn a_magnet_download_announces_its_metadata() {
    let s = setup(None);
    let seeder = s.lt_seeder();
    let ih = info_hash_of(&s.torrent);
    let magnet = format!("magnet:?xt=urn:btih:{ih}&x.pe={}", seeder.addr());
    let out = s.dir.path().join("out");
    let o = rtc_json(&[], &out, magnet.as_ref());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same_tree(&s.content, &out.join("dir"));
    let lines = parse(&o.stdout);
    check_download(&lines, 3, &["done"]);
    assert_eq!(lines[0]["metadata"], false);
    let ev = events(&lines);
    let meta = ev
        .iter()
        .position(|&e| e == "metadata")
        .expect("metadata line");
    assert_eq!(ev.iter().filter(|&&e| e == "metadata").count(), 1);
    let first_file = ev.iter().position(|&e| e == "file_done").unwrap();
    assert!(meta < first_file, "{ev:?}");
    assert_eq!(lines[meta]["files"][1]["path"], "dir/b.bin");
    assert_eq!(lines[meta]["selection"], serde_json::json!([0, 1, 2]));
}

/// `rtc seed --json` over complete data, then Ctrl-C: done, seeding, and
/// `stopped` last, exit 0.
#[test]
fn a_seed_stopped_with_ctrl_c_ends_with_stopped() {
    let s = setup(None);
    let mut child = spawn_json(&["seed"], &s.dir.path().join("seed"), s.torrent.as_os_str());
    let lines = read_until(&mut child, "seeding");
    kill(child.id(), "-INT");
    let rest = finish(&mut child);
    let mut all = lines;
    all.extend(rest.0);
    assert_eq!(rest.1, Some(0));
    check_download(&all, 3, &["stopped"]);
    let ev = events(&all);
    let done = ev.iter().position(|&e| e == "done").unwrap();
    assert_eq!(ev[done + 1], "seeding", "{ev:?}");
}

/// Lines from a running child's stdout up to the first `event`.
fn read_until(child: &mut std::process::Child, event: &str) -> Vec<Value> {
    let out = child.stdout.as_mut().unwrap();
    let mut reader = BufReader::new(out);
    let mut lines = Vec::new();
    let deadline = Instant::now() + BOUND;
    loop {
        assert!(Instant::now() < deadline, "no {event} line");
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            panic!("stdout ended before {event}: {lines:?}");
        }
        let v = parse(line.as_bytes()).remove(0);
        let stop = v["event"] == event;
        lines.push(v);
        if stop {
            return lines;
        }
    }
}

/// The rest of stdout and the exit code, bounded.
fn finish(child: &mut std::process::Child) -> (Vec<Value>, Option<i32>) {
    let mut rest = Vec::new();
    let out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut BufReader::new(out), &mut buf);
        buf
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("rtc did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    rest.extend(parse(&reader.join().unwrap()));
    (rest, status.code())
}

fn kill(pid: u32, sig: &str) {
    Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
}

#[test]
fn a_dead_tracker_ends_with_an_error_line_and_exit_4() {
    let dead = format!("http://127.0.0.1:{}/announce", free_port());
    let s = setup(Some(&dead));
    let o = rtc_json(&[], &s.dir.path().join("out"), s.torrent.as_os_str());
    assert_eq!(o.status.code(), Some(4));
    let lines = parse(&o.stdout);
    let ev = events(&lines);
    assert_eq!(ev[0], "start");
    assert_eq!(*ev.last().unwrap(), "error", "{ev:?}");
    assert_eq!(lines.last().unwrap()["code"], 4);
    // Like every line of the download, the error names its torrent.
    assert_eq!(lines.last().unwrap()["info_hash"], info_hash_of(&s.torrent));
    assert!(!ev.contains(&"done"));
}

#[test]
fn a_bad_torrent_is_one_error_line_and_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.torrent");
    std::fs::write(&bad, b"d4:infoi3ee").unwrap();
    for args in [
        vec!["--json"],
        vec!["info", "--json"],
        vec!["verify", "--json"],
    ] {
        let o = run_bounded(rtc_cmd().args(&args).arg(&bad), BOUND);
        assert_eq!(o.status.code(), Some(3), "{args:?}");
        let lines = parse(&o.stdout);
        assert_eq!(events(&lines), ["error"], "{args:?}");
        assert_eq!(lines[0]["code"], 3);
        assert!(lines[0]["message"]
            .as_str()
            .unwrap()
            .contains("invalid torrent"));
    }
}

/// A peer that accepts and never answers: the download waits; Ctrl-C
/// cancels it (exit 130, `error` with code 130 last).
#[test]
fn a_cancelled_download_ends_with_error_130() {
    let s = setup(None);
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = silent.local_addr().unwrap().to_string();
    let out = s.dir.path().join("out");
    let mut child = spawn_json(&["--peer", &peer], &out, s.torrent.as_os_str());
    let mut lines = read_until(&mut child, "progress");
    kill(child.id(), "-INT");
    let (rest, code) = finish(&mut child);
    lines.extend(rest);
    assert_eq!(code, Some(130));
    let ev = events(&lines);
    assert_eq!(ev[0], "start");
    assert_eq!(*ev.last().unwrap(), "error", "{ev:?}");
    assert_eq!(lines.last().unwrap()["code"], 130);
    drop(silent);
}

#[test]
fn info_verify_and_create_write_one_line_each() {
    let s = setup(None);
    let ih = info_hash_of(&s.torrent);
    let o = run_bounded(rtc_cmd().args(["info", "--json"]).arg(&s.torrent), BOUND);
    assert!(o.status.success());
    let info = parse(&o.stdout);
    assert_eq!(events(&info), ["info"]);
    assert_eq!(info[0]["info_hash"], ih);
    assert_eq!(info[0]["files"].as_array().unwrap().len(), 3);
    // The human listing shows the same indices.
    let o = run_bounded(rtc_cmd().arg("info").arg(&s.torrent), BOUND);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("files:        3 (index, bytes, path)"),
        "{text}"
    );
    assert!(text.contains("      1        700000  dir/b.bin"), "{text}");
    assert!(
        text.contains("      2       2097152  dir/sub/c.bin"),
        "{text}"
    );

    // Complete data verifies; then one file cut short is partial, exit 6.
    let seed = s.dir.path().join("seed");
    let verify = |dir: &Path| {
        run_bounded(
            rtc_cmd()
                .args(["verify", "--json", "-o"])
                .arg(dir)
                .arg(&s.torrent),
            BOUND,
        )
    };
    let o = verify(&seed);
    assert!(o.status.success());
    let v = parse(&o.stdout);
    assert_eq!(events(&v), ["verify"]);
    assert_eq!(v[0]["missing"], serde_json::json!([]));
    assert_eq!(v[0]["files"][1]["status"], "complete");

    let copy = s.dir.path().join("copy");
    copy_tree(&seed, &copy);
    let b = copy.join("dir/b.bin");
    let f = std::fs::OpenOptions::new().write(true).open(&b).unwrap();
    f.set_len(100_000).unwrap();
    let o = verify(&copy);
    assert_eq!(o.status.code(), Some(6));
    let v = parse(&o.stdout);
    assert_eq!(events(&v), ["verify", "error"]);
    assert_eq!(v[1]["code"], 6);
    // b.bin holds bytes 1,500,000..2,200,000 (pieces 5..=8 of 256 KiB);
    // cut to 100,000 bytes, pieces 6..=8 fail, and with piece 8 the start
    // of sub/c.bin, while a.bin stays whole.
    assert_eq!(v[0]["files"][0]["status"], "complete");
    assert_eq!(v[0]["files"][1]["status"], "partial");
    assert_eq!(v[0]["files"][2]["status"], "partial");
    assert_eq!(v[0]["missing"], serde_json::json!([[6, 8]]));

    let out = s.dir.path().join("new.torrent");
    let o = run_bounded(
        rtc_cmd()
            .args(["create", "--json", "-q", "--piece-length", "262144"])
            .arg(seed.join("dir"))
            .arg("-o")
            .arg(&out),
        BOUND,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let c = parse(&o.stdout);
    assert_eq!(events(&c), ["created"]);
    assert_eq!(c[0]["info_hash"], info_hash_of(&out));
    assert_eq!(c[0]["path"], out.to_str().unwrap());
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let e = entry.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dst);
        } else {
            std::fs::create_dir_all(to).unwrap();
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}
