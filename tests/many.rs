//! Several torrents in one `rtc` run (arguments, or `-i LIST`): each
//! downloads from its own libtorrent seeder through one session, a bad
//! entry is named and sets the exit code without stopping the others, and
//! `--json` keeps each torrent's lines apart by info hash.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

const BOUND: Duration = Duration::from_secs(60);

struct One {
    torrent: PathBuf,
    content: PathBuf,
    hash: String,
    seeder: Peer,
}

/// A torrent of `files` random files under `dir/seed-NAME/NAME`, seeded
/// by its own libtorrent.
fn one(dir: &Path, name: &str, files: &[usize], seed: u64) -> One {
    let parent = dir.join(format!("seed-{name}"));
    let content = parent.join(name);
    for (i, &len) in files.iter().enumerate() {
        random_file(&content.join(format!("f{i}.bin")), len, seed + i as u64);
    }
    let torrent = dir.join(format!("{name}.torrent"));
    mktorrent(&content, &torrent, None, 18);
    let hash = info_hash_of(&torrent);
    let seeder = Peer::libtorrent_seed(&torrent, &parent, free_port(), "127.0.0.1");
    One {
        torrent,
        content,
        hash,
        seeder,
    }
}

fn parse(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn of<'a>(lines: &'a [Value], hash: &str) -> Vec<&'a str> {
    lines
        .iter()
        .filter(|l| l["info_hash"] == hash)
        .map(|l| l["event"].as_str().unwrap())
        .collect()
}

#[test]
fn a_list_downloads_together_and_exits_with_the_worst_code() {
    let dir = tempfile::tempdir().unwrap();
    let a = one(dir.path(), "a", &[2 * 1024 * 1024 + 3], 10);
    let b = one(dir.path(), "b", &[1_000_000, 1_500_000], 20);
    let bad = dir.path().join("bad.torrent");
    std::fs::write(&bad, b"not a torrent").unwrap();
    // `b` as a magnet naming its seeder; `a` from `--peer`.
    let magnet = format!("magnet:?xt=urn:btih:{}&x.pe={}", b.hash, b.seeder.addr());
    let list = dir.path().join("list");
    std::fs::write(
        &list,
        format!(
            "# torrents for tonight\n{}\n\n{magnet}\n{}\n",
            a.torrent.display(),
            bad.display()
        ),
    )
    .unwrap();
    let out = dir.path().join("out");
    let o = run_bounded(
        rtc_cmd()
            .args(["--json", "--port", &free_port().to_string()])
            .args(["--peer", &a.seeder.addr().to_string(), "-i"])
            .arg(&list)
            .arg("-o")
            .arg(&out),
        BOUND,
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{stderr}");
    assert_same_tree(&a.content, &out.join("a"));
    assert_same_tree(&b.content, &out.join("b"));
    let bad_name = bad.display().to_string();
    assert!(stderr.contains(&bad_name), "{stderr}");
    assert!(stderr.contains("1 of 3 torrents failed"), "{stderr}");

    let lines = parse(&o.stdout);
    let ea = of(&lines, &a.hash);
    let eb = of(&lines, &b.hash);
    assert_eq!(ea.first(), Some(&"start"), "{ea:?}");
    assert_eq!(ea.last(), Some(&"done"), "{ea:?}");
    assert_eq!(eb.first(), Some(&"start"), "{eb:?}");
    assert_eq!(eb.last(), Some(&"done"), "{eb:?}");
    assert_eq!(eb.iter().filter(|&&e| e == "file_done").count(), 2);
    assert!(eb.contains(&"metadata"), "{eb:?}");
    let bad_line = lines
        .iter()
        .find(|l| l["event"] == "error" && l["source"] == bad_name.as_str())
        .expect("an error line for the bad entry");
    assert_eq!(bad_line["code"], 3);
    let last = lines.last().unwrap();
    assert_eq!(last["event"], "error");
    assert_eq!(last["code"], 3);
    assert!(last.get("info_hash").is_none(), "{last}");

    // Both again, as arguments: already complete, so done at once; `a`
    // twice is refused (a usage error, 2), named, and stops nothing.
    let o = run_bounded(
        rtc_cmd()
            .args(["--json", "-q", "--port", &free_port().to_string(), "-o"])
            .arg(&out)
            .arg(&a.torrent)
            .arg(&b.torrent)
            .arg(&a.torrent),
        BOUND,
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("already in this session"), "{stderr}");
    let lines = parse(&o.stdout);
    assert_eq!(of(&lines, &a.hash).last(), Some(&"done"));
    assert_eq!(of(&lines, &b.hash).last(), Some(&"done"));
    let dup = lines
        .iter()
        .find(|l| l["event"] == "error" && l["code"] == 2 && l.get("source").is_some())
        .expect("an error line for the duplicate");
    assert!(dup.get("info_hash").is_none(), "{dup}");
    assert_same_tree(&a.content, &out.join("a"));
}

#[test]
fn several_torrents_refuse_save_torrent_and_one_only_commands() {
    let o = run_bounded(
        rtc_cmd().args(["--save-torrent", "/tmp/x.torrent", "a.torrent", "b.torrent"]),
        BOUND,
    );
    assert_eq!(o.status.code(), Some(2));
    let o = run_bounded(rtc_cmd().args(["info", "a.torrent", "b.torrent"]), BOUND);
    assert_eq!(o.status.code(), Some(2));
}

/// Torrents of one small file each under `dir/data`, complete there.
fn complete(dir: &Path, names: &[&str]) -> Vec<(PathBuf, String)> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let content = dir.join("data").join(name);
            random_file(&content.join("f.bin"), 40_000 + i, 70 + i as u64);
            let torrent = dir.join(format!("{name}.torrent"));
            mktorrent(&content, &torrent, None, 15);
            let hash = info_hash_of(&torrent);
            (torrent, hash)
        })
        .collect()
}

/// Entries that are already complete, read from a list: each has its
/// `checked` line although it ended before the loop read its events; a
/// torrent listed again is refused however soon its first copy ended; a
/// failing entry's `source` is its list line byte for byte; a bad magnet
/// is named on stderr.
#[test]
fn each_entry_of_a_list_is_reported_in_full() {
    let dir = tempfile::tempdir().unwrap();
    let t = complete(dir.path(), &["x", "y", "z"]);
    let odd = dir.path().join("we\\ird\t.torrent");
    std::fs::write(&odd, b"not a torrent").unwrap();
    let bad_magnet = "magnet:?xt=urn:btih:zz";
    let mut list = String::new();
    for line in [
        t[0].0.display().to_string(),
        t[1].0.display().to_string(),
        t[0].0.display().to_string(),
        odd.display().to_string(),
        bad_magnet.to_string(),
        t[2].0.display().to_string(),
    ] {
        list.push_str(&line);
        list.push('\n');
    }
    let list_path = dir.path().join("list");
    std::fs::write(&list_path, list).unwrap();
    let o = run_bounded(
        rtc_cmd()
            .args(["--json", "--timeout", "5", "--port"])
            .arg(free_port().to_string())
            .arg("-i")
            .arg(&list_path)
            .arg("-o")
            .arg(dir.path().join("data")),
        BOUND,
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("3 of 6 torrents failed"), "{stderr}");
    assert!(stderr.contains(&format!("rtc: {bad_magnet}: ")), "{stderr}");
    let lines = parse(&o.stdout);
    for (_, hash) in &t {
        let events = of(&lines, hash);
        assert_eq!(events.first(), Some(&"start"), "{events:?}");
        assert!(events.contains(&"checked"), "{events:?}");
        assert_eq!(events.last(), Some(&"done"), "{events:?}");
        assert_eq!(events.iter().filter(|&&e| e == "start").count(), 1);
    }
    let errors: Vec<(&Value, &Value)> = lines
        .iter()
        .filter(|l| l["event"] == "error" && l.get("source").is_some())
        .map(|l| (&l["source"], &l["code"]))
        .collect();
    assert_eq!(
        errors,
        [
            (&Value::from(t[0].0.display().to_string()), &Value::from(2)),
            (&Value::from(odd.display().to_string()), &Value::from(3)),
            (&Value::from(bad_magnet), &Value::from(3)),
        ]
    );
}

/// SIGTERM while the list is still being read (its next entry a FIFO
/// nobody writes, so the read blocks): rtc ends within a few seconds with
/// exit 130 and an `error` line, not killed by the signal.
#[test]
fn a_signal_while_a_list_is_read_ends_with_130() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let t = complete(dir.path(), &["x"]);
    let fifo = dir.path().join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let list_path = dir.path().join("list");
    std::fs::write(
        &list_path,
        format!("{}\n{}\n", t[0].0.display(), fifo.display()),
    )
    .unwrap();
    let mut child = rtc_cmd()
        .args(["--json", "-q", "--port"])
        .arg(free_port().to_string())
        .arg("-i")
        .arg(&list_path)
        .arg("-o")
        .arg(dir.path().join("data"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert!(first.contains("\"start\""), "{first}");
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let rest: Vec<String> = out.lines().map(Result::unwrap).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{rest:?}");
    let last: Value = serde_json::from_str(rest.last().unwrap()).unwrap();
    assert_eq!(last["event"], "error");
    assert_eq!(last["code"], 130);
}

/// A selection that does not fit an entry (file 3 of one-file torrents)
/// refuses that entry before it starts: an `error` line with its source
/// and no `info_hash`, and no `start` line for it.
#[test]
fn an_entry_the_selection_does_not_fit_never_starts() {
    let dir = tempfile::tempdir().unwrap();
    let t = complete(dir.path(), &["x", "y"]);
    let o = run_bounded(
        rtc_cmd()
            .args(["--json", "-q", "--files", "3", "--port"])
            .arg(free_port().to_string())
            .arg(&t[0].0)
            .arg(&t[1].0)
            .arg("-o")
            .arg(dir.path().join("data")),
        BOUND,
    );
    assert_eq!(o.status.code(), Some(2));
    let lines = parse(&o.stdout);
    for (torrent, hash) in &t {
        assert!(of(&lines, hash).is_empty(), "{lines:?}");
        let refused = lines
            .iter()
            .find(|l| l["source"] == torrent.display().to_string().as_str())
            .expect("an error line for each entry");
        assert_eq!(refused["event"], "error");
        assert_eq!(refused["code"], 2);
    }
}
