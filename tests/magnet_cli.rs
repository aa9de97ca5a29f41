//! Magnet links through the real binary: every malformed link in
//! tests/corpus/magnets/bad.txt, given as the argument or on stdin, exits
//! 3 with one `rtc:` line that names the problem; a valid link exits 2
//! (not supported yet); `rtc magnet FILE` prints a torrent's link.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Output, Stdio};

/// The words rtc's error line must contain for each kind in the corpus.
fn fragment(kind: &str) -> &'static str {
    match kind {
        "not-magnet" => "does not begin with 'magnet:?'",
        "too-long" => "over rtc's limit",
        "no-hash" => "no info hash",
        "v2-only" => "needs a v1 hash",
        "hash-length" => "expected 40 (hex) or 32 (base32)",
        "hash-alphabet" => "is not valid",
        "two-hashes" => "two different info hashes",
        "escape" => "bad percent-escape",
        "utf8" => "not UTF-8",
        "peer" => "bad peer address (x.pe)",
        "so" => "bad file selection (so)",
        "control" => "raw control character",
        other => panic!("unknown kind {other} in the corpus"),
    }
}

/// Runs `rtc ARGS`, with `stdin` as its standard input.
fn rtc(args: &[&str], stdin: &[u8], dir: &Path) -> Output {
    let mut child = common::rtc_cmd()
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // rtc may exit before reading stdin: a broken pipe is no failure here.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    child.wait_with_output().unwrap()
}

/// Asserts exit 3 and one stderr line `rtc: ...` containing `needle`.
fn assert_rejected(out: &Output, needle: &str, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{what}: {err}");
    assert_eq!(err.lines().count(), 1, "{what}: one line, got {err:?}");
    assert!(err.starts_with("rtc: "), "{what}: {err:?}");
    assert!(err.contains("invalid magnet link: "), "{what}: {err:?}");
    assert!(err.contains(needle), "{what}: {needle:?} not in {err:?}");
    assert!(!err.contains('\u{1b}'), "{what}: raw escape in {err:?}");
    assert!(out.stdout.is_empty(), "{what}: printed on stdout");
}

#[test]
fn every_bad_magnet_is_rejected_with_one_line_naming_the_problem() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/magnets/bad.txt");
    let corpus = std::fs::read_to_string(corpus).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cases: Vec<(String, String)> = corpus
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (kind, link) = l.split_once('\t').expect("kind<TAB>link");
            (kind.to_owned(), link.to_owned())
        })
        .collect();
    assert!(cases.len() >= 30, "corpus has {} links", cases.len());
    // Too big for a tidy corpus line, and a terminal escape in the hash.
    let hex = "c12fe1c06bba254a9dc9f519b335aa7c1367a88a";
    cases.push((
        "too-long".into(),
        format!("magnet:?xt=urn:btih:{hex}&dn={}", "a".repeat(70_000)),
    ));
    cases.push((
        "control".into(),
        "magnet:?xt=urn:btih:\u{1b}[2J\u{1b}[31m".into(),
    ));
    // Two links where one is read (stdin): not one link with a newline
    // in its name.
    cases.push((
        "control".into(),
        format!("magnet:?xt=urn:btih:{hex}&dn=a\nmagnet:?xt=urn:btih:{hex}&dn=b"),
    ));
    for (kind, link) in &cases {
        let needle = fragment(kind);
        let short: String = link.chars().take(80).collect();
        assert_rejected(&rtc(&[link], b"", dir.path()), needle, &short);
        assert_rejected(
            &rtc(&["info", link], b"", dir.path()),
            needle,
            &format!("info {short}"),
        );
        let piped = rtc(&["-"], format!("\n {link}\n").as_bytes(), dir.path());
        assert_rejected(&piped, needle, &format!("stdin {short}"));
        assert!(String::from_utf8_lossy(&piped.stderr).starts_with("rtc: <stdin>: "));
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing written"
    );
}

#[test]
fn a_valid_magnet_with_nobody_to_ask_exits_4() {
    let dir = tempfile::tempdir().unwrap();
    // No tracker, no peer: the metadata phase finds nobody.
    let link = "magnet:?xt=urn:btih:YEX6DQDLXISUVHOJ6UM3GNNKPQJWPKEK&dn=x";
    let flags = ["--timeout", "1", "--port", "0"];
    for (arg, stdin) in [(link, ""), ("-", link)] {
        let mut args = vec![arg];
        args.extend(flags);
        let out = rtc(&args, stdin.as_bytes(), dir.path());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{err}");
        assert!(err.starts_with("rtc: no peers"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

#[test]
fn rtc_magnet_of_a_magnet_prints_it_normalised() {
    let dir = tempfile::tempdir().unwrap();
    // Base32 in, hex out; the name kept, unknown parameters dropped.
    let link = "magnet:?xt=urn:btih:YEX6DQDLXISUVHOJ6UM3GNNKPQJWPKEK&dn=x&zz=1";
    let out = rtc(&["magnet", link], b"", dir.path());
    assert_eq!(out.status.code(), Some(0));
    let line = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        line.trim_end(),
        "magnet:?xt=urn:btih:c12fe1c06bba254a9dc9f519b335aa7c1367a88a&dn=x"
    );
}

#[test]
fn rtc_magnet_prints_the_link_of_a_torrent() {
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("some data.bin");
    std::fs::write(&content, vec![7u8; 100_000]).unwrap();
    let torrent = dir.path().join("t.torrent");
    let tracker = "http://tracker.example:6969/announce?key=a b";
    common::mktorrent(&content, &torrent, Some(tracker), 15);
    let hash = common::info_hash_of(&torrent);

    let path = torrent.to_str().unwrap();
    let bytes = std::fs::read(&torrent).unwrap();
    for (args, stdin) in [
        (vec!["magnet", path], &[][..]),
        (vec!["magnet", "-"], &bytes[..]),
    ] {
        let out = rtc(&args, stdin, dir.path());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(err.is_empty(), "{err}");
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert_eq!(stdout.lines().count(), 1, "{stdout:?}");
        let line = stdout.trim_end();
        assert!(
            line.starts_with(&format!("magnet:?xt=urn:btih:{hash}")),
            "{line}"
        );
        assert!(line.contains("&dn=some%20data.bin"), "{line}");
        assert!(
            line.contains("&tr=http%3A%2F%2Ftracker.example%3A6969%2Fannounce%3Fkey%3Da%20b"),
            "{line}"
        );
        assert!(line.is_ascii() && !line.contains(' '), "{line}");
    }
}
