//! File selection: which files of a torrent a download writes. Owns the
//! rules (index ranges such as `0,3-5`, include and exclude globs, a
//! magnet's BEP 53 `so=` as the default), their resolution against a
//! torrent's file list, and the set of pieces a selection needs. Pure: no
//! I/O. Does not decide where the bytes of unselected files go (`storage`
//! keeps them in the part file) or what to fetch first (`session`).

use crate::geometry::Layout;
use crate::metainfo::Torrent;
use crate::peer::message::Bitfield;
use crate::types::PieceIndex;
use std::fmt;

/// Which files of a torrent to download. The default selects every file.
///
/// Resolution against the torrent's files: the files named by index
/// ([`files`](Self::files)) and those matching an include glob are
/// selected; with neither, a magnet link's `so=` list (BEP 53) if it has
/// one, else every file. Files matching an exclude glob are then taken
/// out. Globs match the path `rtc info` prints (`name/dir/file` in a
/// multi-file torrent) or that path without its first component; `*`
/// also matches `/`. An index past the last file, or a selection left
/// empty, is an error ([`SelectError`]).
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct FileSelection {
    indices: Vec<(u32, u32)>,
    include: Vec<Glob>,
    exclude: Vec<Glob>,
    /// A magnet's `so=`: used when neither indices nor includes are given.
    default: Option<Vec<(u32, u32)>>,
}

#[derive(Clone, Debug)]
struct Glob {
    text: String,
    pattern: glob::Pattern,
}

/// Why a file selection cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SelectError {
    /// An index list such as `0,3-5` does not parse.
    BadList {
        /// The list as given (cut to 100 characters).
        list: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A glob does not parse.
    BadGlob {
        /// The glob as given.
        glob: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An index names no file of the torrent.
    OutOfRange {
        /// The index asked for.
        index: u32,
        /// Files in the torrent.
        files: usize,
    },
    /// The rules select no file.
    Empty {
        /// Files in the torrent.
        files: usize,
    },
}

impl fmt::Display for SelectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SelectError::BadList { list, reason } => write!(
                f,
                "bad file list {}: {reason} (expected indices and ranges like 0,3-5)",
                crate::text::Escaped(list)
            ),
            SelectError::BadGlob { glob, reason } => {
                write!(f, "bad glob {}: {reason}", crate::text::Escaped(glob))
            }
            SelectError::OutOfRange { index, files } => write!(
                f,
                "file index {index} is out of range: the torrent has {files} file{} \
                 (`rtc info` lists them with their index)",
                if *files == 1 { "" } else { "s" }
            ),
            SelectError::Empty { files } => write!(
                f,
                "the selection matches none of the torrent's {files} file{}",
                if *files == 1 { "" } else { "s" }
            ),
        }
    }
}

impl std::error::Error for SelectError {}

/// Parses `0,3-5`-style lists (BEP 53's `so` syntax) into inclusive
/// ranges. `Err` says what is wrong.
pub(crate) fn parse_ranges(list: &str) -> Result<Vec<(u32, u32)>, &'static str> {
    fn index(s: &str) -> Result<u32, &'static str> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err("an index is not a number");
        }
        s.parse().map_err(|_| "an index is too large")
    }
    if list.is_empty() {
        return Err("it is empty");
    }
    list.split(',')
        .map(|item| match item.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (index(a)?, index(b)?);
                if a > b {
                    return Err("a range ends before it starts");
                }
                Ok((a, b))
            }
            None => index(item).map(|i| (i, i)),
        })
        .collect()
}

const MATCH: glob::MatchOptions = glob::MatchOptions {
    case_sensitive: true,
    require_literal_separator: false,
    require_literal_leading_dot: false,
};

impl FileSelection {
    /// Every file (the default).
    pub fn all() -> FileSelection {
        FileSelection::default()
    }

    /// Adds the files of an index list such as `0,3-5` (indices as `rtc
    /// info` prints them).
    pub fn files(mut self, list: &str) -> Result<FileSelection, SelectError> {
        let ranges = parse_ranges(list).map_err(|reason| SelectError::BadList {
            list: list.chars().take(100).collect(),
            reason,
        })?;
        self.indices.extend(ranges);
        Ok(self)
    }

    /// Adds one file by index.
    pub fn file(mut self, index: u32) -> FileSelection {
        self.indices.push((index, index));
        self
    }

    /// Adds the files whose path matches `glob` (`*`, `?`, `[a-z]`).
    pub fn include(mut self, glob: &str) -> Result<FileSelection, SelectError> {
        self.include.push(Glob::new(glob)?);
        Ok(self)
    }

    /// Leaves out the files whose path matches `glob`.
    pub fn exclude(mut self, glob: &str) -> Result<FileSelection, SelectError> {
        self.exclude.push(Glob::new(glob)?);
        Ok(self)
    }

    /// Whether no rule was given: every file (or a magnet's `so=`).
    pub fn is_default(&self) -> bool {
        self.indices.is_empty() && self.include.is_empty() && self.exclude.is_empty()
    }

    /// Sets the magnet's `so=` list, used when no index or include is given.
    pub(crate) fn with_default(mut self, so: Option<&[(u32, u32)]>) -> FileSelection {
        self.default = so.map(<[_]>::to_vec);
        self
    }

    /// One flag per file of `torrent`: selected or not. Linear in the
    /// files, the rules and their ranges clipped to the file count.
    pub(crate) fn resolve(&self, torrent: &Torrent) -> Result<Vec<bool>, SelectError> {
        let files = torrent.files();
        let n = files.len();
        // Ranges may overlap and be huge (a link's `so=0-4294967295`
        // many times over): counted as starts and ends, then summed in
        // one pass, so the cost is ranges + files, never their product.
        let mark = |ranges: &[(u32, u32)], picked: &mut Vec<bool>, strict: bool| {
            let mut edges = vec![0i64; n + 1];
            for &(a, b) in ranges {
                if strict && b as usize >= n {
                    let index = if (a as usize) < n { n as u32 } else { a };
                    return Err(SelectError::OutOfRange { index, files: n });
                }
                if (a as usize) < n {
                    edges[a as usize] += 1;
                    edges[(b as usize).min(n - 1) + 1] -= 1;
                }
            }
            let mut depth = 0;
            for (p, edge) in picked.iter_mut().zip(&edges) {
                depth += edge;
                *p = *p || depth > 0;
            }
            Ok(())
        };
        let paths: Vec<(String, Option<String>)> = files
            .iter()
            .map(|f| {
                let full = f.path().to_string_lossy().into_owned();
                let inner = full.split_once('/').map(|(_, rest)| rest.to_owned());
                (full, inner)
            })
            .collect();
        let matches = |g: &Glob, i: usize| {
            let (full, inner) = &paths[i];
            g.pattern.matches_with(full, MATCH)
                || inner
                    .as_deref()
                    .is_some_and(|s| g.pattern.matches_with(s, MATCH))
        };
        let mut picked = vec![false; n];
        if !self.indices.is_empty() || !self.include.is_empty() {
            mark(&self.indices, &mut picked, true)?;
            for (i, p) in picked.iter_mut().enumerate() {
                *p = *p || self.include.iter().any(|g| matches(g, i));
            }
        } else if let Some(so) = &self.default {
            // A link's list is not the user's typing: indices past the
            // last file are ignored (libtorrent does the same).
            mark(so, &mut picked, false)?;
        } else {
            picked.fill(true);
        }
        for (i, p) in picked.iter_mut().enumerate() {
            *p = *p && !self.exclude.iter().any(|g| matches(g, i));
        }
        // A torrent whose files are all empty has nothing to choose from.
        if n > 0 && !picked.iter().any(|&p| p) {
            return Err(SelectError::Empty { files: n });
        }
        Ok(picked)
    }
}

impl Glob {
    fn new(text: &str) -> Result<Glob, SelectError> {
        let pattern = glob::Pattern::new(text).map_err(|e| SelectError::BadGlob {
            glob: text.chars().take(200).collect(),
            reason: e.msg.to_string(),
        })?;
        Ok(Glob {
            text: text.to_owned(),
            pattern,
        })
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The pieces holding at least one byte of a selected file: what the
/// download must fetch. Linear in files and pieces.
pub(crate) fn wanted_pieces(layout: &Layout, selected: &[bool]) -> Bitfield {
    let mut wanted = Bitfield::new(layout.piece_count());
    for (i, _) in selected.iter().enumerate().filter(|(_, &s)| s) {
        for p in layout.pieces_of_file(i) {
            wanted.set(PieceIndex(p));
        }
    }
    wanted
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A multi-file torrent `top` with these files (path, length) and
    /// 16 KiB pieces.
    fn torrent(files: &[(&str, u64)]) -> Torrent {
        let total: u64 = files.iter().map(|f| f.1).sum();
        let pieces = total.div_ceil(16384) as usize;
        let mut info = b"d5:filesl".to_vec();
        for (p, len) in files {
            info.extend(format!("d6:lengthi{len}e4:pathl").bytes());
            for c in p.split('/') {
                info.extend(format!("{}:{c}", c.len()).bytes());
            }
            info.extend(b"ee");
        }
        info.extend(b"e4:name3:top12:piece lengthi16384e6:pieces");
        info.extend(format!("{}:", 20 * pieces).bytes());
        info.extend(vec![0u8; 20 * pieces]);
        info.extend(b"e");
        Torrent::from_info(&info, &[]).unwrap()
    }

    fn four() -> Torrent {
        torrent(&[
            ("a.mkv", 20000),
            ("sub/b.txt", 100),
            ("sub/c.mkv", 40000),
            ("d.nfo", 5),
        ])
    }

    fn picked(s: &FileSelection, t: &Torrent) -> Vec<usize> {
        let flags = s.resolve(t).unwrap();
        (0..flags.len()).filter(|&i| flags[i]).collect()
    }

    #[test]
    fn index_lists_parse_like_so() {
        assert_eq!(parse_ranges("0,3-5"), Ok(vec![(0, 0), (3, 5)]));
        assert_eq!(parse_ranges("7"), Ok(vec![(7, 7)]));
        assert!(parse_ranges("").is_err());
        assert!(parse_ranges("1,").is_err());
        assert!(parse_ranges("5-3").is_err());
        assert!(parse_ranges("-3").is_err());
        assert!(parse_ranges("x").is_err());
        assert!(parse_ranges("99999999999").is_err());
        let e = FileSelection::all().files("2-1").unwrap_err();
        assert!(matches!(e, SelectError::BadList { .. }), "{e}");
    }

    #[test]
    fn default_is_every_file_or_the_magnets_list() {
        let t = four();
        assert_eq!(picked(&FileSelection::all(), &t), [0, 1, 2, 3]);
        let so = FileSelection::all().with_default(Some(&[(1, 2), (9, 20)]));
        assert_eq!(picked(&so, &t), [1, 2]);
        // The user's own rules win over the link's.
        let mine = so.clone().files("3").unwrap();
        assert_eq!(picked(&mine, &t), [3]);
        // An exclude alone applies to the link's list.
        let ex = so.exclude("*.txt").unwrap();
        assert_eq!(picked(&ex, &t), [2]);
    }

    #[test]
    fn indices_and_globs_add_up_and_excludes_take_away() {
        let t = four();
        let s = FileSelection::all().files("0,3").unwrap();
        assert_eq!(picked(&s, &t), [0, 3]);
        let s = FileSelection::all().include("*.mkv").unwrap();
        assert_eq!(picked(&s, &t), [0, 2]);
        // Against the path inside the torrent, with or without `top/`.
        let s = FileSelection::all().include("sub/*").unwrap();
        assert_eq!(picked(&s, &t), [1, 2]);
        let s = FileSelection::all().include("top/sub/b.txt").unwrap();
        assert_eq!(picked(&s, &t), [1]);
        let s = FileSelection::all()
            .files("3")
            .unwrap()
            .include("*.txt")
            .unwrap()
            .exclude("*.nfo")
            .unwrap();
        assert_eq!(picked(&s, &t), [1]);
        let s = FileSelection::all().exclude("*.mkv").unwrap();
        assert_eq!(picked(&s, &t), [1, 3]);
    }

    #[test]
    fn bad_rules_are_errors_that_name_the_problem() {
        let t = four();
        let s = FileSelection::all().files("2-9").unwrap();
        assert_eq!(
            s.resolve(&t),
            Err(SelectError::OutOfRange { index: 4, files: 4 })
        );
        let s = FileSelection::all().file(7);
        assert_eq!(
            s.resolve(&t),
            Err(SelectError::OutOfRange { index: 7, files: 4 })
        );
        let s = FileSelection::all().include("*.iso").unwrap();
        assert_eq!(s.resolve(&t), Err(SelectError::Empty { files: 4 }));
        let s = FileSelection::all().exclude("*").unwrap();
        assert_eq!(s.resolve(&t), Err(SelectError::Empty { files: 4 }));
        let e = FileSelection::all().include("[a-").unwrap_err();
        assert!(matches!(e, SelectError::BadGlob { .. }));
        assert!(e.to_string().starts_with("bad glob [a-:"), "{e}");
    }

    #[test]
    fn huge_and_many_ranges_cost_ranges_plus_files() {
        let t = four();
        let so = FileSelection::all().with_default(Some(&[(0, u32::MAX)]));
        assert_eq!(picked(&so, &t), [0, 1, 2, 3]);
        let many = vec![(1, u32::MAX); 100_000];
        let so = FileSelection::all().with_default(Some(&many));
        assert_eq!(picked(&so, &t), [1, 2, 3]);
        let so = FileSelection::all().with_default(Some(&[(2, 2), (1, 2), (9, 9)]));
        assert_eq!(picked(&so, &t), [1, 2]);
    }

    #[test]
    fn wanted_pieces_include_boundary_pieces() {
        // a.mkv: bytes 0..20000 (pieces 0-1); sub/b.txt 20000..20100
        // (piece 1); sub/c.mkv 20100..60100 (pieces 1-3); d.nfo (piece 3).
        let t = four();
        let w = wanted_pieces(t.layout(), &[false, true, false, false]);
        assert_eq!(
            (0..4).map(|p| w.has(PieceIndex(p))).collect::<Vec<_>>(),
            [false, true, false, false]
        );
        let w = wanted_pieces(t.layout(), &[false, false, false, true]);
        assert_eq!(w.count(), 1);
        assert!(w.has(PieceIndex(3)));
    }
}
