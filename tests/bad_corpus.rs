//! Runs the real binary over every malformed torrent in tests/corpus/bad
//! (made by scripts/make-bad-torrents): each must exit 3 with one line that
//! names the problem, never panic, and create nothing.

use std::path::Path;
use std::process::{Command, Stdio};

#[test]
fn every_bad_torrent_is_rejected_with_a_clear_line() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/bad");
    let expected = std::fs::read_to_string(corpus.join("expected.tsv")).unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for line in expected.lines() {
        let (file, needle) = line.split_once('\t').expect("name<TAB>fragment");
        for args in [vec!["info"], vec!["-o", "out"], vec!["verify", "-o", "out"]] {
            let out = Command::new(env!("CARGO_BIN_EXE_rtc"))
                .arg("--no-dht")
                .args(&args)
                .arg(corpus.join(file))
                .current_dir(out_dir.path())
                .stdin(Stdio::null())
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(3), "{file} {args:?}: {err}");
            assert_eq!(err.lines().count(), 1, "{file}: one line, got {err:?}");
            assert!(err.contains("invalid torrent"), "{file}: {err}");
            assert!(err.contains(needle), "{file}: {needle:?} not in {err:?}");
            assert!(!err.contains("panicked"), "{file}: {err}");
        }
        checked += 1;
    }
    assert!(checked >= 40, "corpus has {checked} files");
    assert_eq!(
        std::fs::read_dir(out_dir.path()).unwrap().count(),
        0,
        "nothing written"
    );
}
