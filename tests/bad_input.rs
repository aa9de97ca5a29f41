//! Malformed torrents given to the real `rtc` binary: each must exit with its
//! documented code and a one-line message, never panic, and write nothing
//! (in particular nothing outside the output directory).

mod common;
use common::bencode::{encode, Dict, Value};
use std::path::Path;
use std::process::{Command, Output, Stdio};

const BAD_TORRENT: i32 = 3;
const USAGE: i32 = 2;
const IO: i32 = 5;

fn rtc(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rtc"))
        .arg("--no-dht")
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .expect("run rtc")
}

/// A valid-looking single-file torrent whose info dict is `info`.
fn torrent_with(info: Dict<'_>) -> Vec<u8> {
    let mut top = Dict::new();
    top.insert(b"announce", Value::Bytes(b"http://127.0.0.1:1/announce"));
    top.insert(b"info", Value::Dict(info));
    encode(&Value::Dict(top))
}

fn multi_file_info<'a>(paths: &'a [&'a [&'a [u8]]], pieces: &'a [u8]) -> Dict<'a> {
    let files = paths
        .iter()
        .map(|p| {
            let mut f = Dict::new();
            f.insert(b"length", Value::Int(10));
            f.insert(
                b"path",
                Value::List(p.iter().map(|c| Value::Bytes(c)).collect()),
            );
            Value::Dict(f)
        })
        .collect();
    let mut info = Dict::new();
    info.insert(b"name", Value::Bytes(b"dir"));
    info.insert(b"piece length", Value::Int(16384));
    info.insert(b"pieces", Value::Bytes(pieces));
    info.insert(b"files", Value::List(files));
    info
}

/// Runs `rtc` over `bytes` (as a file and on stdin) in a fresh directory and
/// checks the exit code, a one-line message containing `needle`, and that
/// no file other than the torrent itself exists afterwards.
fn expect_rejected(bytes: &[u8], code: i32, needle: &str) {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    std::fs::write(work.join("bad.torrent"), bytes).unwrap();
    for args in [
        vec!["-o", "out", "bad.torrent"],
        vec!["info", "bad.torrent"],
    ] {
        let out = rtc(&args, &work);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
        assert!(stderr.starts_with("rtc: "), "{stderr}");
        assert!(stderr.contains(needle), "{needle:?} not in {stderr:?}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // stdin path
    let mut child = Command::new(env!("CARGO_BIN_EXE_rtc"))
        .arg("--no-dht")
        .args(["-o", "out", "-"])
        .current_dir(&work)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(bytes).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(code));
    // Nothing was created: not the output dir, not anything beside it.
    let mut left: Vec<_> = walk(dir.path());
    left.sort();
    assert_eq!(left, vec![work.join("bad.torrent")], "files written");
}

fn walk(p: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[test]
fn truncated_torrent() {
    let mut info = Dict::new();
    info.insert(b"name", Value::Bytes(b"a"));
    info.insert(b"piece length", Value::Int(16384));
    info.insert(b"pieces", Value::Bytes(&[0u8; 20]));
    info.insert(b"length", Value::Int(100));
    let full = torrent_with(info);
    expect_rejected(&full[..full.len() / 2], BAD_TORRENT, "invalid torrent");
}

#[test]
fn non_bencode_bytes() {
    expect_rejected(
        b"<html>not a torrent</html>",
        BAD_TORRENT,
        "invalid torrent",
    );
}

#[test]
fn path_with_dot_dot() {
    let evil: &[&[u8]] = &[b"..", b"..", b"escaped"];
    let ok: &[&[u8]] = &[b"fine"];
    let paths = [ok, evil];
    let pieces = [0u8; 40];
    let bytes = torrent_with(multi_file_info(&paths, &pieces));
    expect_rejected(&bytes, BAD_TORRENT, "..");
}

#[test]
fn absolute_and_separator_paths() {
    let pieces = [0u8; 20];
    let abs: &[&[u8]] = &[b"/etc/passwd"];
    expect_rejected(
        &torrent_with(multi_file_info(&[abs], &pieces)),
        BAD_TORRENT,
        "invalid torrent",
    );
    let sep: &[&[u8]] = &[b"a/../../b"];
    expect_rejected(
        &torrent_with(multi_file_info(&[sep], &pieces)),
        BAD_TORRENT,
        "invalid torrent",
    );
}

#[test]
fn pieces_length_not_a_multiple_of_20() {
    let mut info = Dict::new();
    info.insert(b"name", Value::Bytes(b"a"));
    info.insert(b"piece length", Value::Int(16384));
    info.insert(b"pieces", Value::Bytes(&[0u8; 21]));
    info.insert(b"length", Value::Int(100));
    expect_rejected(&torrent_with(info), BAD_TORRENT, "21");
}

#[test]
fn piece_count_not_matching_length() {
    let mut info = Dict::new();
    info.insert(b"name", Value::Bytes(b"a"));
    info.insert(b"piece length", Value::Int(16384));
    info.insert(b"pieces", Value::Bytes(&[0u8; 40]));
    info.insert(b"length", Value::Int(100));
    expect_rejected(&torrent_with(info), BAD_TORRENT, "invalid torrent");
}

#[test]
fn missing_torrent_file_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = rtc(&["nope.torrent"], dir.path());
    assert_eq!(out.status.code(), Some(IO));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot read nope.torrent"), "{stderr}");
}

#[test]
fn usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &[][..],
        &["--bogus", "x.torrent"][..],
        &["--max-peers", "many", "x.torrent"][..],
        // Several torrents download together; `info` takes one.
        &["info", "a.torrent", "b.torrent"][..],
    ] {
        let out = rtc(args, dir.path());
        assert_eq!(out.status.code(), Some(USAGE), "{args:?}");
    }
    // Each names the problem.
    for (args, says) in [
        (
            &["--seed", "--seed", "x.torrent"][..],
            "--seed given more than once",
        ),
        (
            &["--port", "1", "--port=2", "x"][..],
            "--port given more than once",
        ),
        (&["-", "-"][..], "- (stdin) can be given once"),
        (&["-i", "-", "-"][..], "- (stdin) can be given once"),
        (
            &["--timeout", "0", "x.torrent"][..],
            "--timeout must be at least 1",
        ),
        (&["info"][..], "info needs a torrent file"),
        (
            &["--peer", "127.0.0.1:0", "x.torrent"][..],
            "--peer 127.0.0.1:0: not HOST:PORT",
        ),
        (&["create"][..], "create needs a file or directory"),
    ] {
        let out = rtc(args, dir.path());
        assert_eq!(out.status.code(), Some(USAGE), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    let out = rtc(&["--help"], dir.path());
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("EXIT CODES"));
}

/// A torrent whose file name is not UTF-8 is read by that name; a missing
/// one is named with its bytes shown (`\xff`), not a lossy look-alike.
#[test]
fn paths_that_are_not_utf8_are_used_as_given() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let name = std::ffi::OsStr::from_bytes(b"t\xff.torrent");
    std::fs::write(
        dir.path().join(name),
        torrent_with(multi_file_info(&[&[b"a"]], &[0; 20])),
    )
    .unwrap();
    let run = |name: &std::ffi::OsStr| {
        Command::new(env!("CARGO_BIN_EXE_rtc"))
            .arg("info")
            .arg(name)
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let out = run(name);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("name:"));
    let out = run(std::ffi::OsStr::from_bytes(b"u\xff.torrent"));
    assert_eq!(out.status.code(), Some(IO));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot read u\\xff.torrent"), "{stderr}");
}

/// Output that cannot be written (a full disk) is an I/O error, exit 5;
/// a reader that went away (`| head`) ends rtc quietly with 0.
#[test]
fn a_full_stdout_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("t.torrent"),
        torrent_with(multi_file_info(&[&[b"a"]], &[0; 20])),
    )
    .unwrap();
    for json in [false, true] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rtc"));
        if json {
            cmd.arg("--json");
        }
        let out = cmd
            .args(["info", "t.torrent"])
            .current_dir(dir.path())
            .stdout(std::fs::File::create("/dev/full").unwrap())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(IO), "json {json}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("cannot write to stdout"), "{stderr}");
    }
    // Several torrents that find no peers (exit 4 each): the worst code
    // wins, and stdout that could not be written is the worse one.
    std::fs::write(
        dir.path().join("u.torrent"),
        torrent_with(multi_file_info(&[&[b"b"]], &[0; 20])),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rtc"))
        .args(["--json", "--no-dht", "--timeout", "1", "--port"])
        .arg(common::free_port().to_string())
        .args(["t.torrent", "u.torrent"])
        .current_dir(dir.path())
        .stdout(std::fs::File::create("/dev/full").unwrap())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(IO), "{stderr}");
    assert!(stderr.contains("cannot write to stdout"), "{stderr}");
}

/// Names, paths, comments and tracker URLs are the torrent author's: `rtc
/// info` prints them with control characters escaped, so a torrent cannot
/// drive the terminal (colours, cursor moves, fake lines).
#[test]
fn info_escapes_terminal_control_characters() {
    let dir = tempfile::tempdir().unwrap();
    let pieces = [0u8; 20];
    let path: &[&[u8]] = &[b"evil\x1b]0;owned\x07\nfake: line"];
    let paths = [path];
    let mut info = multi_file_info(&paths, &pieces);
    info.insert(b"name", Value::Bytes(b"name\x1b[31mred\x1b[0m"));
    let mut top = Dict::new();
    top.insert(
        b"announce",
        Value::Bytes(b"http://127.0.0.1:1/\x1b[2Jannounce"),
    );
    top.insert(b"comment", Value::Bytes(b"line one\r\nline two\xc2\x9b"));
    top.insert(b"info", Value::Dict(info));
    std::fs::write(dir.path().join("evil.torrent"), encode(&Value::Dict(top))).unwrap();
    let out = rtc(&["info", "evil.torrent"], dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "raw control characters printed: {text:?}"
    );
    assert!(
        text.contains("name:         name\\u{1b}[31mred\\u{1b}[0m"),
        "{text}"
    );
    assert!(
        text.contains("evil\\u{1b}]0;owned\\u{7}\\nfake: line"),
        "{text}"
    );
    assert!(
        text.contains("comment:      line one\\r\\nline two\\u{9b}"),
        "{text}"
    );
    assert!(
        text.contains("http://127.0.0.1:1/\\u{1b}[2Jannounce"),
        "{text}"
    );
    // Every line is one of ours: no forged "fake: line" line.
    assert!(!text.lines().any(|l| l.starts_with("fake")), "{text}");
}

/// `rtc create` refuses names a torrent may not hold (a backslash) and
/// names that are not UTF-8 with exit 5 and the name shown escaped, and
/// writes no torrent.
#[test]
fn create_refuses_names_a_torrent_cannot_hold() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    for (name, says) in [
        (
            &b"a\\b"[..],
            "bs/a\\\\b is not a usable file name ('\\' inside a path component)",
        ),
        (
            &b"c\xffd"[..],
            "bs/c\\xffd is not a usable file name (not UTF-8)",
        ),
    ] {
        let data = dir.path().join("bs");
        let _ = std::fs::remove_dir_all(&data);
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join(std::ffi::OsStr::from_bytes(name)), b"x").unwrap();
        let out = rtc(&["create", "bs", "-o", "bs.torrent"], dir.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(IO), "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
        assert!(!dir.path().join("bs.torrent").exists());
    }
}
