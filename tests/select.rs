//! File selection (`--files`, `--include`, `--exclude`, a magnet's `so=`)
//! against a real libtorrent seeder: only the chosen files appear, byte
//! for byte, pieces shared with unselected neighbours are right, a second
//! run selecting more resumes from what is verified, `rtc verify` reports
//! by file, and a partial seed serves the pieces it has (boundary pieces
//! read back from the part file).

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BOUND: Duration = Duration::from_secs(60);
const PIECE: u64 = 256 * 1024;
/// The last piece's length.
const LAST: u64 = 1_900_010 - 7 * PIECE;

/// Five files in 256 KiB pieces (byte ranges in the torrent):
/// 0 `a.bin` 0..300000 (pieces 0-1), 1 `b.bin` 300000..400000 (inside
/// piece 1), 2 `c.bin` 400000..900000 (pieces 1-3), 3 `sub/d.bin`
/// 900000..1900000 (pieces 3-7), 4 `z.txt` 1900000..1900010 (piece 7).
/// Every piece but 0, 2, 4, 5 and 6 holds bytes of several files.
fn setup() -> DirTorrent {
    let files: Vec<(&str, usize, u64)> = FILES
        .iter()
        .enumerate()
        .map(|(i, &(name, len))| (name, len, 40 + i as u64))
        .collect();
    DirTorrent::new(&files, None, 18)
}

const FILES: [(&str, usize); 5] = [
    ("a.bin", 300_000),
    ("b.bin", 100_000),
    ("c.bin", 500_000),
    ("sub/d.bin", 1_000_000),
    ("z.txt", 10),
];

fn out(s: &DirTorrent) -> PathBuf {
    s.dir.path().join("out")
}

/// The `status` of each file in a `verify` line.
fn statuses(report: &Value) -> Vec<&str> {
    report["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["status"].as_str().unwrap())
        .collect()
}

/// `rtc --json -q --port FREE ARGS -o OUT TARGET`, run to its end.
fn rtc_json(args: &[&str], out: &Path, target: &std::ffi::OsStr) -> std::process::Output {
    run_bounded(
        rtc_cmd()
            .args(["--json", "-q", "--port"])
            .arg(free_port().to_string())
            .args(args)
            .arg("-o")
            .arg(out)
            .arg(target),
        BOUND,
    )
}

/// [`rtc_json`] that must exit with `code`: its output.
fn rtc_exits(
    code: i32,
    args: &[&str],
    out: &Path,
    target: &std::ffi::OsStr,
) -> std::process::Output {
    let o = rtc_json(args, out, target);
    assert_eq!(
        o.status.code(),
        Some(code),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// [`rtc_json`] that must succeed: its lines.
fn rtc_ok(args: &[&str], out: &Path, target: &std::ffi::OsStr) -> Vec<Value> {
    lines(&rtc_exits(0, args, out, target).stdout)
}

fn lines(stdout: &[u8]) -> Vec<Value> {
    std::str::from_utf8(stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn event<'a>(lines: &'a [Value], name: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["event"] == name).collect()
}

/// Indices of the `file_done` lines, each once, all before `done` (the
/// last line).
fn files_done(lines: &[Value]) -> BTreeSet<u64> {
    assert_eq!(lines.last().unwrap()["event"], "done", "{lines:?}");
    let done: Vec<u64> = event(lines, "file_done")
        .iter()
        .map(|l| l["index"].as_u64().unwrap())
        .collect();
    let set: BTreeSet<u64> = done.iter().copied().collect();
    assert_eq!(set.len(), done.len(), "a file_done twice");
    set
}

/// Files under `dir/dir` (the torrent's directory), relative to it.
fn files_under(out: &Path) -> BTreeSet<String> {
    list_files(&out.join("dir"))
        .into_iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn same_files(s: &DirTorrent, names: &[&str]) {
    for name in names {
        assert_same_bytes(&s.content.join(name), &out(s).join("dir").join(name));
    }
}

fn hidden(out: &Path) -> BTreeSet<String> {
    std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".rtc-"))
        .collect()
}

/// Three runs over one output directory: two files, then everything but
/// `sub/`, then everything. Each writes only what it selects, resumes
/// from what is verified, and the last leaves the seeder's exact tree and
/// no hidden file.
#[test]
fn selected_files_only_then_more_then_all() {
    let s = setup();
    let seeder = s.lt_seeder();
    let peer = seeder.addr().to_string();
    let out = out(&s);
    let ih = info_hash_of(&s.torrent);

    // 1: b.bin by index and z.txt by glob. Pieces 1 and 7 are fetched;
    // their bytes of a, c and d go to the part file.
    let l = rtc_ok(
        &["--peer", &peer, "--files", "1", "--include", "*.txt"],
        &out,
        s.torrent.as_os_str(),
    );
    assert_eq!(l[0]["selection"], serde_json::json!([1, 4]));
    assert_eq!(files_done(&l), [1, 4].into());
    assert_eq!(
        l.last().unwrap()["downloaded_bytes"],
        PIECE + LAST,
        "pieces 1 and 7"
    );
    assert_eq!(files_under(&out), set(&["b.bin", "z.txt"]));
    same_files(&s, &["b.bin", "z.txt"]);
    assert!(!out.join("dir/sub").exists(), "an unselected directory");
    // Complete: the marker goes; a partial selection keeps the part file.
    assert_eq!(hidden(&out), set(&[&format!(".rtc-{ih}.part")]));

    // `rtc verify` with the same selection: complete (exit 0); without,
    // incomplete (exit 6), reported by file (the pieces b.bin and z.txt
    // share with missing files still verify, from the part file).
    let v = rtc_exits(
        0,
        &["verify", "--files", "1", "--include", "*.txt"],
        &out,
        s.torrent.as_os_str(),
    );
    assert_eq!(
        statuses(&lines(&v.stdout)[0]),
        ["skipped", "complete", "skipped", "skipped", "complete"]
    );
    // The human report counts the selected files' pieces.
    let human = run_bounded(
        rtc_cmd()
            .args(["verify", "--files", "1", "--include", "*.txt", "-o"])
            .arg(&out)
            .arg(&s.torrent),
        BOUND,
    );
    let report = String::from_utf8_lossy(&human.stdout);
    assert_eq!(
        report.lines().next(),
        Some("dir: 2/2 pieces of the selected files verified (319.5 KiB of 319.5 KiB)"),
        "pieces 1 and 7: {report}"
    );
    let v = rtc_exits(6, &["verify"], &out, s.torrent.as_os_str());
    assert_eq!(
        statuses(&lines(&v.stdout)[0]),
        ["missing", "complete", "missing", "missing", "complete"]
    );

    // 2: everything but sub/. Pieces 1 and 7 verify on disk (a.bin's and
    // c.bin's bytes of piece 1 from the part file, copied into the new
    // files) and are not fetched again; pieces 0, 2, 3 are.
    let l = rtc_ok(
        &["--peer", &peer, "--exclude", "sub/*"],
        &out,
        s.torrent.as_os_str(),
    );
    assert_eq!(l[0]["selection"], serde_json::json!([0, 1, 2, 4]));
    assert_eq!(event(&l, "checked")[0]["pieces_ok"], 2, "pieces 1, 7");
    assert_eq!(files_done(&l), [0, 1, 2, 4].into());
    assert_eq!(
        l.last().unwrap()["downloaded_bytes"],
        3 * PIECE,
        "pieces 0, 2, 3"
    );
    assert_eq!(
        files_under(&out),
        set(&["a.bin", "b.bin", "c.bin", "z.txt"])
    );
    same_files(&s, &["a.bin", "b.bin", "c.bin", "z.txt"]);

    // 3: everything: d.bin's pieces 3 and 7 are whole with its bytes from
    // the part file; 4, 5, 6 are fetched.
    let l = rtc_ok(&["--peer", &peer], &out, s.torrent.as_os_str());
    assert_eq!(event(&l, "checked")[0]["pieces_ok"], 5, "pieces 0-3, 7");
    assert_eq!(files_done(&l), [0, 1, 2, 3, 4].into());
    assert_eq!(l.last().unwrap()["downloaded_bytes"], 3 * PIECE);
    assert_same_tree(&s.content, &out.join("dir"));
    assert!(hidden(&out).is_empty(), "{:?}", hidden(&out));
}

/// A magnet's `so=` is the default selection; `--files` replaces it.
#[test]
fn a_magnets_select_only_list_is_the_default() {
    let s = setup();
    let seeder = s.lt_seeder();
    let ih = info_hash_of(&s.torrent);
    let magnet = format!("magnet:?xt=urn:btih:{ih}&x.pe={}&so=2", seeder.addr());
    let out = out(&s);
    let l = rtc_ok(&[], &out, magnet.as_ref());
    assert_eq!(
        event(&l, "metadata")[0]["selection"],
        serde_json::json!([2])
    );
    assert_eq!(files_done(&l), [2].into());
    assert_eq!(files_under(&out), set(&["c.bin"]));
    same_files(&s, &["c.bin"]);

    let out2 = s.dir.path().join("out2");
    let l = rtc_ok(&["--files", "0"], &out2, magnet.as_ref());
    assert_eq!(files_under(&out2), set(&["a.bin"]));
    assert_eq!(files_done(&l), [0].into());
}

/// A complete download seeded with fewer files selected: nothing is
/// fetched or rewritten, the shared pieces' bytes of the files left out
/// are copied to the part file, and this partial seed serves what it has,
/// shared pieces included (read back from the part file): a second rtc
/// selecting the same files downloads them from it alone.
#[test]
fn a_partial_seed_serves_its_pieces() {
    let s = setup();
    let out = out(&s);
    {
        let seeder = s.lt_seeder();
        let peer = seeder.addr().to_string();
        rtc_ok(&["--peer", &peer], &out, s.torrent.as_os_str());
    } // the libtorrent seeder is gone
    let v = rtc_json(&["verify", "--files", "1,4"], &out, s.torrent.as_os_str());
    assert_eq!(v.status.code(), Some(0), "complete data, fewer files");
    let out2 = s.dir.path().join("out2");
    leech_from_seed(&s, &out, &out2);
    // The seed's own files are as they were; its part file is new.
    assert_same_tree(&s.content, &out.join("dir"));
    let ih = info_hash_of(&s.torrent);
    assert_eq!(hidden(&out), set(&[&format!(".rtc-{ih}.part")]));
}

/// Selections that cannot be used are usage errors (exit 2) that name the
/// problem, before anything is written.
#[test]
fn bad_selections_are_usage_errors() {
    let s = setup();
    let out = out(&s);
    for (args, says) in [
        (
            &["--files", "9"][..],
            "file index 9 is out of range: the torrent has 5 files",
        ),
        (&["--files", "1-"][..], "--files: bad file list 1-"),
        (&["--include", "[a-"][..], "--include: bad glob [a-"),
        (
            &["--include", "*.iso"][..],
            "the selection matches none of the torrent's 5 files",
        ),
        (&["--exclude", "*"][..], "the selection matches none"),
    ] {
        let o = rtc_json(args, &out, s.torrent.as_os_str());
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
        let l = lines(&o.stdout);
        let last = l.last().unwrap();
        assert_eq!(last["event"], "error");
        assert_eq!(last["code"], 2);
        assert!(!out.exists(), "{args:?} wrote {out:?}");
    }
}

/// A file the user put where an unselected file would go is never
/// written: selecting it later is refused (exit 5), the file untouched.
#[test]
fn a_users_file_at_an_unselected_name_is_never_written() {
    let s = setup();
    let seeder = s.lt_seeder();
    let peer = seeder.addr().to_string();
    let out = out(&s);
    rtc_ok(
        &["--peer", &peer, "--files", "1"],
        &out,
        s.torrent.as_os_str(),
    );
    let mine = out.join("dir/a.bin");
    std::fs::write(&mine, b"my own notes").unwrap();
    rtc_ok(
        &["--peer", &peer, "--files", "1"],
        &out,
        s.torrent.as_os_str(),
    );
    // Selecting c.bin too: piece 1 (a, b, c) verifies with a's and c's
    // bytes from the part file; the user's a.bin is not taken for ours.
    let l = rtc_ok(
        &["--peer", &peer, "--files", "1,2"],
        &out,
        s.torrent.as_os_str(),
    );
    assert_eq!(event(&l, "checked")[0]["pieces_ok"], 1, "piece 1");
    assert_eq!(
        l.last().unwrap()["downloaded_bytes"],
        2 * PIECE,
        "pieces 2, 3"
    );
    same_files(&s, &["b.bin", "c.bin"]);
    assert_eq!(std::fs::read(&mine).unwrap(), b"my own notes");
    let o = rtc_exits(
        5,
        &["--peer", &peer, "--files", "0"],
        &out,
        s.torrent.as_os_str(),
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("refusing to overwrite"));
    assert_eq!(std::fs::read(&mine).unwrap(), b"my own notes");
}

/// A selected empty file is created even when nothing needs fetching; a
/// link planted at the marker's name is refused, not followed.
#[test]
fn empty_files_are_created_and_marker_links_refused() {
    let t = DirTorrent::new(&[("e.empty", 0, 1), ("f.bin", 40_000, 2)], None, 15);
    let out = t.dir.path().join("out");
    let l = rtc_ok(&["--files", "0"], &out, t.torrent.as_os_str());
    assert_eq!(files_done(&l), [0].into());
    assert_eq!(std::fs::metadata(out.join("dir/e.empty")).unwrap().len(), 0);
    assert!(!out.join("dir/f.bin").exists());

    let ih = info_hash_of(&t.torrent);
    let victim = t.dir.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    std::os::unix::fs::symlink(&victim, out.join(format!(".rtc-{ih}"))).unwrap();
    rtc_exits(
        5,
        &["--files", "1", "--timeout", "1"],
        &out,
        t.torrent.as_os_str(),
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
}

/// Complete data where nothing can be written (here a directory is in the
/// part file's place) still seeds a narrower selection, its shared pieces
/// read where they are; `rtc verify` ignores the odd part path.
#[test]
fn complete_data_that_cannot_be_written_is_served_in_place() {
    let s = setup();
    let out = out(&s);
    {
        let seeder = s.lt_seeder();
        let peer = seeder.addr().to_string();
        rtc_ok(&["--peer", &peer], &out, s.torrent.as_os_str());
    }
    let ih = info_hash_of(&s.torrent);
    std::fs::create_dir(out.join(format!(".rtc-{ih}.part"))).unwrap();
    rtc_exits(
        0,
        &["verify", "--files", "1,4"],
        &out,
        s.torrent.as_os_str(),
    );
    let out2 = s.dir.path().join("out2");
    leech_from_seed(&s, &out, &out2);
    assert_same_tree(&s.content, &out.join("dir"));
}

/// A download of everything killed half-way, then a narrower run that
/// completes, then everything again: the last run finishes what the first
/// left (the marker stays while those files are unfinished).
#[test]
fn a_killed_download_narrowed_then_widened_completes() {
    let s = setup();
    let seeder = s.lt_seeder();
    let peer = seeder.addr().to_string();
    let out = out(&s);
    let mut child = spawn_until(
        rtc_cmd()
            .args([
                "--json",
                "-q",
                "--max-download-rate",
                "256K",
                "--peer",
                &peer,
            ])
            .arg("-o")
            .arg(&out)
            .arg(&s.torrent),
        |v| v["event"] == "progress" && v["pieces_done"].as_u64().unwrap() >= 2,
    );
    child.kill().unwrap();
    child.wait().unwrap();
    rtc_ok(
        &["--peer", &peer, "--files", "1"],
        &out,
        s.torrent.as_os_str(),
    );
    same_files(&s, &["b.bin"]);
    rtc_ok(&["--peer", &peer], &out, s.torrent.as_os_str());
    assert_same_tree(&s.content, &out.join("dir"));
    assert!(hidden(&out).is_empty(), "{:?}", hidden(&out));
}

/// `rtc seed --files 1,4` over `out`, and a second rtc downloading b.bin
/// and z.txt from it alone into `out2` (checked byte for byte); the seed
/// is stopped with Ctrl-C and exits 0.
fn leech_from_seed(s: &DirTorrent, out: &Path, out2: &Path) {
    let port = free_port();
    let mut seed = spawn_until(
        rtc_cmd()
            .args(["seed", "--json", "-q", "--files", "1,4", "--port"])
            .arg(port.to_string())
            .arg("-o")
            .arg(out)
            .arg(&s.torrent),
        |v| v["event"] == "seeding",
    );
    let from = format!("127.0.0.1:{port}");
    let o = rtc_json(
        &["--peer", &from, "--include", "*b.bin", "--include", "z.*"],
        out2,
        s.torrent.as_os_str(),
    );
    Command::new("kill")
        .args(["-INT", &seed.id().to_string()])
        .status()
        .unwrap();
    let status = seed.wait().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(status.code(), Some(0));
    assert_eq!(files_under(out2), set(&["b.bin", "z.txt"]));
    for name in ["b.bin", "z.txt"] {
        assert_same_bytes(&s.content.join(name), &out2.join("dir").join(name));
    }
}

/// Starts `cmd` (an `rtc --json` run) and reads its lines until one
/// satisfies `until`; what it writes afterwards goes nowhere (rtc stops
/// writing and carries on).
fn spawn_until(cmd: &mut Command, until: impl Fn(&Value) -> bool) -> std::process::Child {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    if let Err(e) = read_until(child.stdout.take(), until) {
        let _ = child.kill();
        let status = child.wait();
        panic!("{e} (rtc: {status:?})");
    }
    child
}

fn read_until(
    out: Option<std::process::ChildStdout>,
    until: impl Fn(&Value) -> bool,
) -> Result<(), String> {
    let mut reader = BufReader::new(out.ok_or("no stdout")?);
    let deadline = Instant::now() + BOUND;
    while Instant::now() < deadline {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return Err("rtc's output ended".into()),
            Ok(_) => {}
        }
        let v: Value = serde_json::from_str(&line).map_err(|e| format!("{e}: {line}"))?;
        if until(&v) {
            return Ok(());
        }
    }
    Err("the awaited line did not come".into())
}

/// A run that stops unfinished (no peer here) owns only the files it
/// selected: a user's file it never selected is still refused by a later
/// run that selects it. A file longer than the torrent says, or with
/// bytes where the torrent has an empty file, is not cut either (exit 5),
/// and `rtc verify` calls it the wrong size.
#[test]
fn an_unfinished_run_owns_only_its_selected_files() {
    let s = setup();
    let out = out(&s);
    std::fs::create_dir_all(out.join("dir")).unwrap();
    let mine = out.join("dir/a.bin");
    std::fs::write(&mine, vec![7u8; 300_000]).unwrap();
    let dead = format!("127.0.0.1:{}", free_port());
    let args = ["--peer", dead.as_str(), "--timeout", "1", "--files", "1"];
    let o = rtc_json(&args, &out, s.torrent.as_os_str());
    assert_eq!(o.status.code(), Some(4), "no peers");
    let seeder = s.lt_seeder();
    let peer = seeder.addr().to_string();
    let o = rtc_exits(5, &["--peer", &peer], &out, s.torrent.as_os_str());
    assert!(String::from_utf8_lossy(&o.stderr).contains("a.bin already exists"));
    assert_eq!(std::fs::read(&mine).unwrap(), vec![7u8; 300_000]);

    // Too long: the torrent's bytes and then some.
    let out2 = s.dir.path().join("out2");
    rtc_ok(
        &["--peer", &peer, "--files", "1"],
        &out2,
        s.torrent.as_os_str(),
    );
    let b = out2.join("dir/b.bin");
    let mut longer = std::fs::read(&b).unwrap();
    longer.extend(b"and my notes");
    std::fs::write(&b, &longer).unwrap();
    let o = rtc_exits(
        5,
        &["--peer", &peer, "--files", "1"],
        &out2,
        s.torrent.as_os_str(),
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("more than the torrent's 100000"));
    assert_eq!(std::fs::read(&b).unwrap(), longer);
    let v = rtc_exits(6, &["verify", "--files", "1"], &out2, s.torrent.as_os_str());
    assert_eq!(statuses(&lines(&v.stdout)[0])[1], "wrong_size");

    // Bytes where the torrent has an empty file.
    let t = DirTorrent::new(&[("e.empty", 0, 1), ("f.bin", 40_000, 2)], None, 15);
    let out3 = t.dir.path().join("out");
    std::fs::create_dir_all(out3.join("dir")).unwrap();
    std::fs::write(out3.join("dir/e.empty"), b"hello").unwrap();
    rtc_exits(5, &["--files", "0"], &out3, t.torrent.as_os_str());
    assert_eq!(std::fs::read(out3.join("dir/e.empty")).unwrap(), b"hello");
}

/// A file whose only unverified pieces are shared with files that are
/// nowhere on disk (here the part file of a narrower download was
/// deleted) is refused with that reason, not called a mismatch, and is
/// left as it is; `--repair` lets the download go on.
#[test]
fn a_file_whose_neighbours_are_gone_is_named_unverifiable() {
    let s = setup();
    let out = out(&s);
    std::fs::create_dir_all(out.join("dir")).unwrap();
    let b = out.join("dir/b.bin");
    std::fs::copy(s.content.join("b.bin"), &b).unwrap();
    let ours = std::fs::read(&b).unwrap();
    let dead = format!("127.0.0.1:{}", free_port());
    let args = ["--peer", dead.as_str(), "--timeout", "1"];
    let o = rtc_exits(5, &args, &out, s.torrent.as_os_str());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("b.bin already exists, and the pieces it shares with")
            && err.contains("a.bin cannot be checked while that file is missing"),
        "{err}"
    );
    assert_eq!(std::fs::read(&b).unwrap(), ours);
    let repair = ["--peer", dead.as_str(), "--timeout", "1", "--repair"];
    rtc_exits(4, &repair, &out, s.torrent.as_os_str());
    assert_eq!(std::fs::read(&b).unwrap(), ours);
}
