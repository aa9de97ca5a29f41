//! Checking data already on disk against the torrent's piece hashes, in
//! parallel on a rayon pool. Used by the session before it downloads
//! (resume) and by `rtc verify`. Owns the per-file status report; does not
//! open files (`storage`) or decide what to download (`session`).

use crate::metainfo::Torrent;
use crate::peer::message::Bitfield;
use crate::storage::{self, Alts, Storage};
use crate::types::PieceIndex;
use rayon::prelude::*;

/// What [`check`] found on disk.
pub struct Checked {
    /// The pieces whose bytes match their hash.
    pub have: Bitfield,
    /// Of those, the ones that matched only with bytes from where an
    /// earlier selection kept them ([`Storage::read_piece_alt`], with
    /// these places): to be written where this selection keeps them
    /// ([`Storage::write_moved`]). At most a few per file.
    pub moved: Vec<(PieceIndex, Alts)>,
}

/// Hashes every piece that may be on disk and returns the set that matches.
/// Pieces whose files did not exist or were empty are not read at all.
/// A piece that fails where this selection looks is tried again where an
/// earlier one may have put some of its bytes. Once `stop()` says so, the
/// remaining pieces are skipped (counted as missing): a download
/// cancelled during its first check ends at once.
pub fn check(
    torrent: &Torrent,
    storage: &Storage,
    pool: &rayon::ThreadPool,
    stop: &(dyn Fn() -> bool + Sync),
) -> Result<Checked, storage::Error> {
    let n = torrent.piece_count();
    let matches = |piece: PieceIndex, buf: &[u8]| {
        torrent
            .piece_hash(piece)
            .is_some_and(|h| crate::hash::sha1(buf) == *h)
    };
    let good: Vec<(u32, Option<Alts>)> = pool.install(|| {
        (0..n)
            .into_par_iter()
            .filter(|&i| storage.piece_may_exist(PieceIndex(i)))
            .map_init(Vec::new, |buf, i| {
                let piece = PieceIndex(i);
                if stop() {
                    return Ok(None);
                }
                if storage.read_piece(piece, buf)? && matches(piece, buf) {
                    return Ok(Some((i, None)));
                }
                for alts in Alts::tries(storage.alt_kinds(piece)) {
                    if storage.read_piece_alt(piece, buf, alts)? && matches(piece, buf) {
                        return Ok(Some((i, Some(alts))));
                    }
                }
                Ok(None)
            })
            .filter_map(|r| r.transpose())
            .collect::<Result<Vec<(u32, Option<Alts>)>, storage::Error>>()
    })?;
    let mut have = Bitfield::new(n);
    let mut moved = Vec::new();
    for (i, alts) in good {
        have.set(PieceIndex(i));
        if let Some(alts) = alts {
            moved.push((PieceIndex(i), alts));
        }
    }
    Ok(Checked { have, moved })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileStatus {
    Complete,
    /// Exists; this many of its pieces verified out of `of`.
    Partial {
        pieces: u32,
        of: u32,
    },
    Missing,
    /// Longer than the torrent says (its pieces may all verify, but the
    /// bytes past its end are not the torrent's).
    WrongSize {
        found: u64,
    },
    /// Not selected: not looked for.
    Skipped,
}

/// Per-file status from a verified piece set. A zero-length file is complete
/// when it exists; a file not `selected` is skipped.
pub fn file_status(
    torrent: &Torrent,
    storage: &Storage,
    have: &Bitfield,
    selected: &[bool],
) -> Vec<FileStatus> {
    let layout = torrent.layout();
    (0..torrent.files().len())
        .map(|i| {
            if !selected.get(i).copied().unwrap_or(true) {
                return FileStatus::Skipped;
            }
            if !storage.file_exists(i) {
                return FileStatus::Missing;
            }
            if let Some(found) = storage.file_len(i).filter(|&n| n > layout.file_length(i)) {
                return FileStatus::WrongSize { found };
            }
            let range = layout.pieces_of_file(i);
            let of = range.len() as u32;
            let pieces = range.filter(|&p| have.has(PieceIndex(p))).count() as u32;
            if pieces == of {
                FileStatus::Complete
            } else {
                FileStatus::Partial { pieces, of }
            }
        })
        .collect()
}
