//! Storage: the torrent's files on disk and the single writer thread that
//! owns them during a download. Owns file creation under the output
//! directory, preallocation and positional reads/writes of whole pieces
//! (which may span several files). Does not decide what to write: only
//! pieces the session has verified are ever sent here.

use crate::geometry::Layout;
use crate::metainfo::Torrent;
use crate::types::PieceIndex;
use crossbeam_channel::{Receiver, Sender};
use std::collections::HashMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Why reading or writing a torrent's files failed. Every path is the
/// full path on disk; `Display` prints it escaped.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A file that rtc did not start holds data that would be overwritten.
    WouldClobber {
        /// The user's file.
        path: PathBuf,
    },
    /// A file that rtc did not start holds data, and every piece of it
    /// that does not verify is shared with a file that is missing (for
    /// example, the part file that held a neighbour's bytes was deleted):
    /// it cannot be told from someone else's file, so it is not written.
    Unverifiable {
        /// The existing file.
        path: PathBuf,
        /// A missing file it shares a piece with.
        missing: PathBuf,
    },
    /// `--repair` was asked for, but the file is not this torrent's size:
    /// it is someone else's file, and it is not touched.
    NotRepairable {
        /// The file left alone.
        path: PathBuf,
        /// Its length in the torrent.
        expected: u64,
        /// Its length on disk.
        actual: u64,
    },
    /// A directory of the output tree could not be created.
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file could not be opened (or created).
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Writing (or extending) a file failed, e.g. the disk is full.
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Reading a file failed.
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A path in the output tree is a symlink or not a regular file/dir.
    NotAFile {
        /// The path refused.
        path: PathBuf,
    },
    /// A file that rtc did not start is longer than the torrent's file of
    /// that name: it is someone else's, and it is not cut.
    TooLong {
        /// The file left alone.
        path: PathBuf,
        /// Its length in the torrent.
        expected: u64,
        /// Its length on disk.
        actual: u64,
    },
}

impl Clone for Error {
    fn clone(&self) -> Self {
        use crate::session::clone_io;
        match self {
            Error::WouldClobber { path } => Error::WouldClobber { path: path.clone() },
            Error::Unverifiable { path, missing } => Error::Unverifiable {
                path: path.clone(),
                missing: missing.clone(),
            },
            Error::NotRepairable {
                path,
                expected,
                actual,
            } => Error::NotRepairable {
                path: path.clone(),
                expected: *expected,
                actual: *actual,
            },
            Error::CreateDir { path, source } => Error::CreateDir {
                path: path.clone(),
                source: clone_io(source),
            },
            Error::Open { path, source } => Error::Open {
                path: path.clone(),
                source: clone_io(source),
            },
            Error::Write { path, source } => Error::Write {
                path: path.clone(),
                source: clone_io(source),
            },
            Error::Read { path, source } => Error::Read {
                path: path.clone(),
                source: clone_io(source),
            },
            Error::NotAFile { path } => Error::NotAFile { path: path.clone() },
            Error::TooLong {
                path,
                expected,
                actual,
            } => Error::TooLong {
                path: path.clone(),
                expected: *expected,
                actual: *actual,
            },
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::CreateDir { path, source } => {
                write!(
                    f,
                    "cannot create directory {}: {source}",
                    crate::text::escaped_path(path)
                )
            }
            Error::Open { path, source } => write!(
                f,
                "cannot open {}: {source}",
                crate::text::escaped_path(path)
            ),
            Error::Write { path, source } => {
                write!(
                    f,
                    "cannot write {}: {source}",
                    crate::text::escaped_path(path)
                )
            }
            Error::Read { path, source } => write!(
                f,
                "cannot read {}: {source}",
                crate::text::escaped_path(path)
            ),
            Error::WouldClobber { path } => write!(
                f,
                "{} already exists and does not match the torrent; refusing to overwrite it \
                 (move it away, choose another output directory, or run again with --repair \
                 if it is this torrent's own damaged data)",
                crate::text::escaped_path(path)
            ),
            Error::Unverifiable { path, missing } => write!(
                f,
                "{} already exists, and the pieces it shares with {} cannot be checked while \
                 that file is missing; refusing to overwrite it (run again with --repair if it \
                 is this torrent's own data, or move it away)",
                crate::text::escaped_path(path),
                crate::text::escaped_path(missing)
            ),
            Error::NotRepairable {
                path,
                expected,
                actual,
            } => write!(
                f,
                "{} has {actual} bytes, not the torrent's {expected}; --repair only rewrites \
                 files of the right size, so it is left alone",
                crate::text::escaped_path(path)
            ),
            Error::NotAFile { path } => write!(
                f,
                "{} exists and is not a regular file or directory (symlinks are not followed)",
                crate::text::escaped_path(path)
            ),
            Error::TooLong {
                path,
                expected,
                actual,
            } => write!(
                f,
                "{} has {actual} bytes, more than the torrent's {expected}; refusing to cut it \
                 (move it away or choose another output directory)",
                crate::text::escaped_path(path)
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::CreateDir { source, .. }
            | Error::Open { source, .. }
            | Error::Write { source, .. }
            | Error::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Which alternative places a read takes (see `Slot::alt`): the part file
/// for selected files that do not exist yet (bytes an earlier, narrower
/// selection kept there), and the own names of unselected files that are
/// still on disk (bytes a wider one wrote there). Tried one kind at a
/// time first, so a stray file of one kind cannot spoil bytes the other
/// kind holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Alts {
    /// Read selected files that do not exist from the part file.
    pub part: bool,
    /// Read unselected files from their own names.
    pub own: bool,
}

impl Alts {
    /// The combinations to try, in order, given the kinds a piece has.
    pub fn tries(have: Alts) -> impl Iterator<Item = Alts> {
        [
            Alts {
                part: true,
                own: false,
            },
            Alts {
                part: false,
                own: true,
            },
            Alts {
                part: true,
                own: true,
            },
        ]
        .into_iter()
        .filter(move |a| (!a.part || have.part) && (!a.own || have.own))
    }
}

/// One file of the torrent as found or created on disk, or, for a file
/// not selected, its place in the part file.
struct Slot {
    path: PathBuf,
    /// Added to offsets inside the file: 0 for a file of its own, the
    /// file's offset in the torrent when its bytes live in the part file.
    base: u64,
    /// Which open handle serves it: its own index, or the part file's
    /// (one past the last file), shared by every unselected file.
    key: usize,
    /// Its bytes go to the part file (the file is not selected).
    part: bool,
    /// False when opened read-only and the file does not exist.
    exists: bool,
    /// The file held bytes before we opened it: its pieces may already be
    /// downloaded and are worth verifying.
    had_data: bool,
    /// Its length before we opened it.
    found_len: u64,
    /// Read-only: where the same bytes may also be found when the
    /// selection changed since they were written (see
    /// [`Storage::read_piece_alt`]): an unselected file's own name, or
    /// the part file for a selected file that does not exist yet.
    alt: Option<Box<Slot>>,
}

impl Slot {
    /// Its bytes held data when opened, where they are kept now or where
    /// an earlier selection kept them.
    fn holds_data(&self) -> bool {
        self.had_data || self.alt.as_ref().is_some_and(|a| a.had_data)
    }
}

/// Bytes of one positional write. The page cache sizes the folios it
/// allocates by the write, and on this benchmark machine (a VM that hands
/// freed memory back to its host) large folios cost far more kernel time
/// than small ones. 1 GiB from a libtorrent seeder, system time of the
/// whole download: one write per 1 MiB piece 1.25-1.31 s (memory recently
/// used) and 1.77-1.87 s (memory handed back); 64 KiB writes 0.41-0.46 and
/// 0.65; 32 KiB 0.49 and 0.49-0.50; 16 KiB 0.50-0.57 and 0.49-0.58; 4 KiB
/// 0.75-0.80 (the calls themselves). md/benchmarks.md has the runs.
const WRITE_CHUNK: usize = 32 * 1024;

/// Data files held open at once by one [`FileCache`] unless told
/// otherwise. A torrent may have 100,000 files; the process may open about
/// 1,000 (`ulimit -n`).
pub(crate) const MAX_OPEN_FILES: usize = 64;

/// Open file handles shared by every [`Storage`] of a session: at most
/// `cap` stay open (least recently used closed first), whatever the number
/// of torrents and files. Shared by the writer threads and every serving
/// connection: the lock is held to find or open a file and clone its
/// handle, never across a read or a write (DESIGN.md, "Open files").
pub(crate) struct FileCache {
    cap: usize,
    inner: Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    /// (storage, file index) -> handle and when it was last used.
    handles: HashMap<(u64, usize), (Arc<File>, u64)>,
    clock: u64,
    next_storage: u64,
}

impl FileCache {
    pub(crate) fn new(cap: usize) -> Arc<FileCache> {
        Arc::new(FileCache {
            cap: cap.max(1),
            inner: Mutex::new(CacheInner::default()),
        })
    }

    fn lock(&self) -> io::Result<std::sync::MutexGuard<'_, CacheInner>> {
        self.inner
            .lock()
            .map_err(|_| io::Error::other("file cache poisoned"))
    }

    fn register(&self) -> u64 {
        self.lock().map_or(u64::MAX, |mut c| {
            c.next_storage += 1;
            c.next_storage
        })
    }

    /// Handle of `(storage, file)`, opened with `open` if it is not open
    /// (closing the least recently used one at the cap). Users still
    /// holding a clone of a closed handle keep it until they finish.
    fn get(
        &self,
        key: (u64, usize),
        open: impl FnOnce() -> io::Result<File>,
    ) -> io::Result<Arc<File>> {
        let mut c = self.lock()?;
        c.clock += 1;
        let now = c.clock;
        if let Some((file, used)) = c.handles.get_mut(&key) {
            *used = now;
            return Ok(Arc::clone(file));
        }
        if c.handles.len() >= self.cap {
            let oldest = c
                .handles
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(&k, _)| k);
            if let Some(k) = oldest {
                c.handles.remove(&k);
            }
        }
        let file = Arc::new(open()?);
        c.handles.insert(key, (Arc::clone(&file), now));
        Ok(file)
    }

    /// Closes every handle of `storage` (it is being dropped).
    fn forget(&self, storage: u64) {
        if let Ok(mut c) = self.lock() {
            c.handles.retain(|&(s, _), _| s != storage);
        }
    }

    /// Handles open now (for tests).
    #[cfg(test)]
    fn open_count(&self) -> usize {
        self.lock().map_or(0, |c| c.handles.len())
    }
}

/// The files of one torrent. Reads and writes are positional
/// (`pread`/`pwrite`), so `&self` suffices and no seek state is shared;
/// several threads may read while the writer thread writes. Files are
/// opened on first use through the session's [`FileCache`]; dropping the
/// storage closes its files.
pub(crate) struct Storage {
    layout: Layout,
    files: Vec<Slot>,
    writable: bool,
    cache: Arc<FileCache>,
    id: u64,
    /// Pieces to read from alternative places ([`Storage::with_alt_reads`]),
    /// sorted by piece.
    alt_reads: Vec<(PieceIndex, Alts)>,
}

impl Drop for Storage {
    fn drop(&mut self) {
        self.cache.forget(self.id);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Create,
    ReadOnly,
}

impl Storage {
    /// Creates (or opens) every file of `torrent` under `dir`, creating
    /// `dir` and nested directories. Existing files are never truncated: a
    /// file shorter than its torrent length is extended (sparse), a longer
    /// one is left alone. Symlinks inside the output tree are refused so
    /// that a torrent cannot be steered outside `dir` through a planted link.
    ///
    /// Only the files in `selected` (one flag per file) are created; the
    /// bytes of the others that share a piece with a selected file go to
    /// the part file, `.rtc-<info hash>.part`, at their offset in the
    /// torrent (sparse: only those bytes take room).
    pub fn open(
        dir: &Path,
        torrent: &Torrent,
        selected: &[bool],
        cache: &Arc<FileCache>,
    ) -> Result<Storage, Error> {
        std::fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        Self::open_with(dir, torrent, selected, Mode::Create, cache)
    }

    /// Opens whatever files of `torrent` exist under `dir`, read-only,
    /// creating nothing (for `rtc verify` and the session's check of what
    /// is already on disk).
    /// Files not in `selected` are read from the part file; where the
    /// selection changed since the bytes were written, the other place is
    /// kept as an alternative ([`read_piece_alt`](Self::read_piece_alt)).
    pub fn open_existing(
        dir: &Path,
        torrent: &Torrent,
        selected: &[bool],
        cache: &Arc<FileCache>,
    ) -> Result<Storage, Error> {
        Self::open_with(dir, torrent, selected, Mode::ReadOnly, cache)
    }

    /// Opens the given files read-only, in layout order (for `rtc create`,
    /// before any torrent exists).
    pub fn open_paths(layout: Layout, paths: Vec<PathBuf>) -> Result<Storage, Error> {
        let files = paths
            .into_iter()
            .map(|path| {
                let file = File::open(&path).map_err(|source| Error::Open {
                    path: path.clone(),
                    source,
                })?;
                drop(file);
                Ok(Slot {
                    path,
                    base: 0,
                    key: 0,
                    part: false,
                    exists: true,
                    had_data: true,
                    found_len: 0,
                    alt: None,
                })
            })
            .collect::<Result<Vec<Slot>, Error>>()?;
        let files = files
            .into_iter()
            .enumerate()
            .map(|(key, slot)| Slot { key, ..slot })
            .collect();
        Ok(Storage::new(
            layout,
            files,
            false,
            &FileCache::new(MAX_OPEN_FILES),
        ))
    }

    /// Creates the selected zero-length files that do not exist (a
    /// download with nothing to fetch still leaves every selected file).
    pub fn create_empty_files(
        dir: &Path,
        torrent: &Torrent,
        selected: &[bool],
    ) -> Result<(), Error> {
        for (i, entry) in torrent.files().iter().enumerate() {
            let path = dir.join(entry.path());
            if entry.length() > 0
                || !selected.get(i).copied().unwrap_or(true)
                || std::fs::symlink_metadata(&path).is_ok()
            {
                continue;
            }
            std::fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
            open_file(dir, &path, entry.path(), 0, Mode::Create)?;
        }
        Ok(())
    }

    fn open_with(
        dir: &Path,
        torrent: &Torrent,
        selected: &[bool],
        mode: Mode,
        cache: &Arc<FileCache>,
    ) -> Result<Storage, Error> {
        let layout = torrent.layout();
        let is_selected = |i: usize| selected.get(i).copied().unwrap_or(true);
        let part_key = torrent.files().len();
        let part_path = part_path(dir, &torrent.info_hash());
        // The part file is made only when a piece to fetch holds bytes of
        // an unselected file; read-only, it is used when it exists.
        let wanted = crate::select::wanted_pieces(layout, selected);
        let part_needed = (0..torrent.files().len()).any(|i| {
            !is_selected(i) && layout.pieces_of_file(i).any(|p| wanted.has(PieceIndex(p)))
        });
        let rel = Path::new(part_path.file_name().unwrap_or_default());
        let part = if mode == Mode::ReadOnly {
            // Only read if it is there: anything odd in its place (a link,
            // a directory) is no part file, and an error only once one
            // must be written.
            open_file(dir, &part_path, rel, u64::MAX, mode)
                .ok()
                .flatten()
        } else if part_needed {
            open_file(dir, &part_path, rel, u64::MAX, mode)?
        } else {
            None
        };
        let in_part = |i: usize| Slot {
            path: part_path.clone(),
            base: layout.file_offset(i),
            key: part_key,
            part: true,
            exists: part.is_some(),
            had_data: part.is_some_and(|len| len > 0),
            found_len: 0,
            alt: None,
        };
        let own = |i: usize, found: Option<u64>| Slot {
            path: dir.join(torrent.files()[i].path()),
            base: 0,
            key: i,
            part: false,
            exists: found.is_some(),
            had_data: found.is_some_and(|len| len > 0),
            found_len: found.unwrap_or(0),
            alt: None,
        };
        let mut files = Vec::with_capacity(torrent.files().len());
        for (i, entry) in torrent.files().iter().enumerate() {
            let path = dir.join(entry.path());
            if is_selected(i) {
                let found = open_file(dir, &path, entry.path(), entry.length(), mode)?;
                let mut slot = own(i, found);
                // Not there yet: an earlier run that did not select it may
                // have kept its bytes of shared pieces in the part file.
                if mode == Mode::ReadOnly && found.is_none() && part.is_some() {
                    slot.alt = Some(Box::new(in_part(i)));
                }
                files.push(slot);
            } else {
                let mut slot = in_part(i);
                // Never created or written by a run that does not select
                // it, but read if it is there (a download that selected it
                // earlier): a link or anything odd in the way is ignored.
                if mode == Mode::ReadOnly {
                    let found = open_file(dir, &path, entry.path(), entry.length(), mode)
                        .ok()
                        .flatten()
                        .filter(|&len| len > 0);
                    if found.is_some() {
                        slot.alt = Some(Box::new(own(i, found)));
                    }
                }
                files.push(slot);
            }
        }
        Ok(Storage::new(
            torrent.layout().clone(),
            files,
            mode == Mode::Create,
            cache,
        ))
    }

    fn new(layout: Layout, files: Vec<Slot>, writable: bool, cache: &Arc<FileCache>) -> Storage {
        Storage {
            layout,
            files,
            writable,
            id: cache.register(),
            cache: Arc::clone(cache),
            alt_reads: Vec::new(),
        }
    }

    /// File `i`, opened if it is not (closing the least recently used one
    /// at the cap). `NotFound` for a file that did not exist read-only.
    fn handle(&self, i: usize) -> io::Result<Arc<File>> {
        self.handle_of(&self.files[i])
    }

    /// Reads of the pieces in `moved` take those alternative places from
    /// now on: complete data whose shared pieces could not be copied where
    /// this selection keeps them (a read-only directory) is served from
    /// where the bytes are.
    pub fn with_alt_reads(mut self, mut moved: Vec<(PieceIndex, Alts)>) -> Storage {
        moved.sort_by_key(|&(p, _)| p.0);
        self.alt_reads = moved;
        self
    }

    fn alts_for(&self, piece: PieceIndex) -> Alts {
        self.alt_reads
            .binary_search_by_key(&piece.0, |&(p, _)| p.0)
            .map_or(Alts::default(), |i| self.alt_reads[i].1)
    }

    /// File `i`'s slot, or its alternative where `alts` says.
    fn slot_for(&self, i: usize, alts: Alts) -> &Slot {
        let own = &self.files[i];
        match &own.alt {
            Some(other) if (other.part && alts.part) || (!other.part && alts.own) => other,
            _ => own,
        }
    }

    fn handle_of(&self, slot: &Slot) -> io::Result<Arc<File>> {
        if !slot.exists {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        self.cache.get((self.id, slot.key), || {
            OpenOptions::new()
                .read(true)
                .write(self.writable)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&slot.path)
        })
    }

    /// Whether this piece may already be complete on disk: it holds bytes
    /// of a selected file (the others are not fetched, so not checked)
    /// and some file it touches held data when opened.
    pub fn piece_may_exist(&self, piece: PieceIndex) -> bool {
        let mut spans = self.layout.spans(piece).map(|s| &self.files[s.file]);
        let mut selected = false;
        let mut data = false;
        for slot in &mut spans {
            selected |= !slot.part;
            data |= slot.holds_data();
        }
        selected && data
    }

    /// Which kinds of alternative places this piece's files have (see
    /// [`read_piece_alt`](Self::read_piece_alt)).
    pub fn alt_kinds(&self, piece: PieceIndex) -> Alts {
        let mut kinds = Alts::default();
        for s in self.layout.spans(piece) {
            if let Some(alt) = &self.files[s.file].alt {
                kinds.part |= alt.part;
                kinds.own |= !alt.part;
            }
        }
        kinds
    }

    /// Fails if a file that held data when opened, and that this download
    /// does not own (`owned`, see `Marker::owned`), has a piece that is
    /// not in `have` (downloading would overwrite bytes we did not write)
    /// or is longer than the torrent says (making it right would cut it).
    pub fn check_not_clobbering(
        &self,
        have: &crate::peer::message::Bitfield,
        repair: bool,
        owned: &[bool],
    ) -> Result<(), Error> {
        for (i, slot) in self.files.iter().enumerate() {
            // The part file is rtc's own: never the user's data.
            if owned.get(i).copied().unwrap_or(false) || slot.part {
                continue;
            }
            let expected = self.layout.file_length(i);
            if slot.exists && slot.found_len > expected {
                return Err(Error::TooLong {
                    path: slot.path.clone(),
                    expected,
                    actual: slot.found_len,
                });
            }
            let mut unchecked = self
                .layout
                .pieces_of_file(i)
                .map(PieceIndex)
                .filter(|&p| !have.has(p))
                .peekable();
            if !slot.had_data || unchecked.peek().is_none() {
                continue;
            }
            if !repair {
                // Pieces that could not be checked because a file they
                // share is missing say nothing against this one.
                let missing = unchecked.map(|p| self.missing_neighbour(p, i));
                return Err(match missing.collect::<Option<Vec<_>>>() {
                    Some(m) => Error::Unverifiable {
                        path: slot.path.clone(),
                        missing: self.files[m[0]].path.clone(),
                    },
                    None => Error::WouldClobber {
                        path: slot.path.clone(),
                    },
                });
            }
            if slot.found_len != expected {
                return Err(Error::NotRepairable {
                    path: slot.path.clone(),
                    expected,
                    actual: slot.found_len,
                });
            }
        }
        Ok(())
    }

    /// A file other than `file` that `piece` touches and whose bytes are
    /// nowhere on disk (neither under its own name nor in the part file).
    fn missing_neighbour(&self, piece: PieceIndex, file: usize) -> Option<usize> {
        self.layout
            .spans(piece)
            .map(|s| s.file)
            .find(|&j| j != file && !self.files[j].holds_data())
    }

    /// Cuts the files this download owns that are longer than the
    /// torrent says back to their length (bytes past a file's end are
    /// never the torrent's; files it does not own were refused instead,
    /// see [`check_not_clobbering`](Self::check_not_clobbering)).
    pub fn fit_owned(&self, owned: &[bool]) -> Result<(), Error> {
        for (i, slot) in self.files.iter().enumerate() {
            let expected = self.layout.file_length(i);
            if slot.part || !owned.get(i).copied().unwrap_or(false) || slot.found_len <= expected {
                continue;
            }
            self.handle(i)
                .and_then(|f| f.set_len(expected))
                .map_err(|source| Error::Write {
                    path: slot.path.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// File `i`'s length on disk under its own name, if it is there and
    /// selected.
    pub fn file_len(&self, i: usize) -> Option<u64> {
        self.files
            .get(i)
            .filter(|s| s.exists && !s.part)
            .map(|s| s.found_len)
    }

    /// Whether file `i` exists on disk under its own name (a file not
    /// selected does not count, whatever is there).
    pub fn file_exists(&self, i: usize) -> bool {
        self.files.get(i).is_some_and(|s| s.exists && !s.part)
    }

    /// Writes one whole piece at its place, across file boundaries.
    pub fn write_piece(&self, piece: PieceIndex, data: &[u8]) -> Result<(), Error> {
        self.write_spans(piece, data, false)
    }

    /// Writes a verified piece found through
    /// [`read_piece_alt`](Self::read_piece_alt) to where this selection
    /// keeps it, leaving alone the files that held data when opened (their
    /// bytes of it verified where they are): the part file and files new
    /// to the selection are written, no user file is.
    pub fn write_moved(&self, piece: PieceIndex, data: &[u8]) -> Result<(), Error> {
        self.write_spans(piece, data, true)
    }

    fn write_spans(&self, piece: PieceIndex, data: &[u8], moved: bool) -> Result<(), Error> {
        for span in self.layout.spans(piece) {
            let slot = &self.files[span.file];
            if moved && !slot.part && slot.had_data {
                continue;
            }
            let start = span.piece_offset as usize;
            let chunk = &data[start..start + span.len as usize];
            let write = self.handle(span.file).and_then(|f| {
                let mut at = slot.base + span.file_offset;
                for part in chunk.chunks(WRITE_CHUNK) {
                    f.write_all_at(part, at)?;
                    at += part.len() as u64;
                }
                Ok(())
            });
            write.map_err(|source| Error::Write {
                path: slot.path.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Reads one block (a range inside one piece) into `buf`, which must be
    /// exactly `b.length` long. Used to serve peers; the caller has checked
    /// the block is inside a verified piece.
    pub fn read_block(&self, b: crate::types::Block, buf: &mut [u8]) -> Result<(), Error> {
        let (lo, hi) = (b.offset, b.offset + b.length);
        for span in self.layout.spans(b.piece) {
            let (s_lo, s_hi) = (span.piece_offset, span.piece_offset + span.len);
            let (from, to) = (lo.max(s_lo), hi.min(s_hi));
            if from >= to {
                continue;
            }
            let slot = self.slot_for(span.file, self.alts_for(b.piece));
            let dst = &mut buf[(from - lo) as usize..(to - lo) as usize];
            let at = slot.base + span.file_offset + (from - s_lo) as u64;
            let read = self.handle_of(slot).and_then(|f| f.read_exact_at(dst, at));
            read.map_err(|source| Error::Read {
                path: slot.path.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Reads one whole piece into `buf` (resized to the piece's length).
    /// `Ok(false)` when some of its bytes are not on disk (file missing or
    /// too short).
    pub fn read_piece(&self, piece: PieceIndex, buf: &mut Vec<u8>) -> Result<bool, Error> {
        self.read_piece_from(piece, buf, self.alts_for(piece))
    }

    /// [`read_piece`](Self::read_piece), taking each file's bytes from its
    /// alternative place where it has one: a piece written when the
    /// selection was different (a file now selected whose bytes are in the
    /// part file, or a file no longer selected that is still there).
    pub fn read_piece_alt(
        &self,
        piece: PieceIndex,
        buf: &mut Vec<u8>,
        alts: Alts,
    ) -> Result<bool, Error> {
        self.read_piece_from(piece, buf, alts)
    }

    fn read_piece_from(
        &self,
        piece: PieceIndex,
        buf: &mut Vec<u8>,
        alts: Alts,
    ) -> Result<bool, Error> {
        buf.resize(self.layout.piece_len(piece) as usize, 0);
        for span in self.layout.spans(piece) {
            let slot = self.slot_for(span.file, alts);
            if !slot.exists {
                return Ok(false);
            }
            let file = self.handle_of(slot).map_err(|source| Error::Read {
                path: slot.path.clone(),
                source,
            })?;
            let start = span.piece_offset as usize;
            let chunk = &mut buf[start..start + span.len as usize];
            match file.read_exact_at(chunk, slot.base + span.file_offset) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
                Err(source) => {
                    return Err(Error::Read {
                        path: slot.path.clone(),
                        source,
                    })
                }
            }
        }
        Ok(true)
    }
}

/// Opens (in create mode, creates) the file at `path`, `rel` under `dir`,
/// without following symlinks, and extends it to `length` if it is
/// shorter (`u64::MAX`: never). Returns its length before, or `None` if
/// it does not exist (read-only).
fn open_file(
    dir: &Path,
    path: &Path,
    rel: &Path,
    length: u64,
    mode: Mode,
) -> Result<Option<u64>, Error> {
    if !check_tree(dir, rel, mode)? {
        return Ok(None);
    }
    // O_NOFOLLOW: a symlink planted as the file itself after `check_tree`
    // looked is refused by the open, not followed.
    let mut options = OpenOptions::new();
    options.read(true).custom_flags(libc::O_NOFOLLOW);
    if mode == Mode::Create {
        options.write(true).create(true).truncate(false);
    }
    let file = options.open(path).map_err(|source| {
        if source.raw_os_error() == Some(libc::ELOOP) {
            Error::NotAFile {
                path: path.to_path_buf(),
            }
        } else {
            Error::Open {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    let len = file
        .metadata()
        .map_err(|source| Error::Open {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    if mode == Mode::Create && length != u64::MAX && len < length {
        file.set_len(length).map_err(|source| Error::Write {
            path: path.to_path_buf(),
            source,
        })?;
    }
    // Closed now, reopened on first use: a torrent's files need not all be
    // open at once.
    Ok(Some(len))
}

/// `.rtc-<info hash>.part` in the output directory: the bytes of files
/// not selected that share a piece with a selected one, at their offset
/// in the torrent. Removed once every file of the torrent is complete.
pub(crate) fn part_path(dir: &Path, info_hash: &crate::types::InfoHash) -> PathBuf {
    dir.join(format!(".rtc-{}.part", info_hash.hex()))
}

/// Walks `rel` under `dir` component by component without following
/// symlinks. In create mode, makes missing directories. Returns whether the
/// file itself exists (or may be created).
fn check_tree(dir: &Path, rel: &Path, mode: Mode) -> Result<bool, Error> {
    let mut cur = dir.to_path_buf();
    let comps: Vec<_> = rel.components().collect();
    for (i, c) in comps.iter().enumerate() {
        cur.push(c);
        let last = i + 1 == comps.len();
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => return Err(Error::NotAFile { path: cur }),
            Ok(m) if !last && !m.is_dir() => return Err(Error::NotAFile { path: cur }),
            Ok(m) if last && !m.is_file() => return Err(Error::NotAFile { path: cur }),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if mode != Mode::Create {
                    return Ok(false);
                }
                if !last {
                    std::fs::create_dir(&cur).map_err(|source| Error::CreateDir {
                        path: cur.clone(),
                        source,
                    })?;
                }
            }
            Err(source) => return Err(Error::Open { path: cur, source }),
        }
    }
    Ok(true)
}

/// `.rtc-<info hash>` in the output directory: present while rtc has a
/// download of that torrent in progress there. It is what lets a restart
/// rewrite wrong bytes in existing files (they are ours); without it,
/// existing files are the user's and are never overwritten. It holds the
/// torrent's info dict, so that the same magnet link run again resumes
/// without asking peers for the metadata.
pub struct Marker {
    path: PathBuf,
}

impl Marker {
    pub fn new(dir: &Path, torrent: &Torrent) -> Marker {
        Marker::for_hash(dir, &torrent.info_hash())
    }

    pub fn for_hash(dir: &Path, info_hash: &crate::types::InfoHash) -> Marker {
        Marker {
            path: dir.join(format!(".rtc-{}", info_hash.hex())),
        }
    }

    /// The info dict kept in the marker, if it is there and hashes to
    /// `info_hash` (anything else, e.g. an older marker, is ignored).
    pub fn info(&self, info_hash: &crate::types::InfoHash) -> Option<Vec<u8>> {
        use std::io::Read;
        // No bigger than the largest info dict rtc accepts from peers.
        let max = u64::from(crate::peer::extension::MAX_METADATA_SIZE);
        let mut bytes = Vec::new();
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.path)
            .ok()?
            .take(max + 1)
            .read_to_end(&mut bytes)
            .ok()?;
        if bytes.len() as u64 > max {
            return None;
        }
        (crate::hash::sha1(&bytes) == info_hash.0).then_some(bytes)
    }

    /// A regular file (a link planted there is no marker).
    pub fn exists(&self) -> bool {
        std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.is_file())
    }

    pub fn create(&self, info: &[u8]) -> Result<(), Error> {
        use std::io::Write;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        // O_NOFOLLOW: a link planted at the marker's name is refused, not
        // followed to overwrite whatever it points at.
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.path)
            .map_err(|source| {
                if source.raw_os_error() == Some(libc::ELOOP) {
                    Error::NotAFile {
                        path: self.path.clone(),
                    }
                } else {
                    Error::Open {
                        path: self.path.clone(),
                        source,
                    }
                }
            })?;
        (&file).write_all(info).map_err(|source| Error::Write {
            path: self.path.clone(),
            source,
        })
    }

    /// `.rtc-<info hash>.own` beside the marker: one bit per file of the
    /// torrent, set for the files this download made or took as its own
    /// (its selected files). Only those are rewritten without the checks
    /// that protect a user's files; a file the download never selected is
    /// not its own, whatever the marker says.
    fn own_path(&self) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(".own");
        PathBuf::from(p)
    }

    /// The files of a `files`-file torrent this unfinished download owns:
    /// none without a marker; every file for a marker from before the
    /// record existed (what such a marker meant).
    pub fn owned(&self, files: usize) -> Vec<bool> {
        use std::io::Read;
        if !self.exists() {
            return vec![false; files];
        }
        let want = files.div_ceil(8);
        let mut bytes = Vec::new();
        let read = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.own_path())
            .and_then(|f| f.take(want as u64 + 1).read_to_end(&mut bytes));
        match read {
            Ok(n) if n == want => (0..files)
                .map(|i| bytes[i / 8] & (0x80 >> (i % 8)) != 0)
                .collect(),
            _ => vec![true; files],
        }
    }

    /// Records the files this download owns (see [`owned`](Self::owned)).
    pub fn set_owned(&self, owned: &[bool]) -> Result<(), Error> {
        use std::io::Write;
        let mut bytes = vec![0u8; owned.len().div_ceil(8)];
        for (i, _) in owned.iter().enumerate().filter(|(_, &o)| o) {
            bytes[i / 8] |= 0x80 >> (i % 8);
        }
        let path = self.own_path();
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|source| Error::Open {
                path: path.clone(),
                source,
            })?;
        (&file)
            .write_all(&bytes)
            .map_err(|source| Error::Write { path, source })
    }

    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(self.own_path());
    }
}

/// The writer's answer to one batch: each piece and how its write went,
/// in the order they were given.
pub(crate) type Written = Vec<(PieceIndex, Result<(), Error>)>;

/// Commands to the writer thread.
pub(crate) enum WriteCmd {
    /// Write verified pieces of `storage`; the thread answers once, on
    /// `done`, after the last of them (an empty batch is answered too:
    /// the answer is how a hash job's end reaches its download).
    Pieces {
        storage: Arc<Storage>,
        pieces: Vec<(PieceIndex, Vec<u8>)>,
        done: Sender<Written>,
    },
    /// Finish queued writes and end the thread.
    Shutdown,
}

/// Runs the single writer thread of a session: it writes the pieces of
/// every torrent in the order they arrive, answering each batch on its
/// `done`. Ends on `Shutdown` or when every sender is gone.
pub(crate) fn spawn_writer(
    commands: Receiver<WriteCmd>,
    spare: crate::buffers::Buffers,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("rtc-writer".into())
        .spawn(move || {
            for cmd in commands {
                match cmd {
                    WriteCmd::Pieces {
                        storage,
                        pieces,
                        done,
                    } => {
                        let mut answer = Vec::with_capacity(pieces.len());
                        for (piece, data) in pieces {
                            answer.push((piece, storage.write_piece(piece, &data)));
                            spare.give(data);
                        }
                        drop(storage);
                        let _ = done.send(answer);
                    }
                    WriteCmd::Shutdown => return,
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alternatives_are_tried_one_kind_at_a_time_first() {
        let a = |part, own| Alts { part, own };
        let tries = |have| Alts::tries(have).collect::<Vec<_>>();
        assert_eq!(tries(a(false, false)), []);
        assert_eq!(tries(a(true, false)), [a(true, false)]);
        assert_eq!(tries(a(false, true)), [a(false, true)]);
        assert_eq!(
            tries(a(true, true)),
            [a(true, false), a(false, true), a(true, true)]
        );
    }

    #[test]
    fn the_file_cache_holds_at_most_its_cap_across_storages() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileCache::new(3);
        let paths: Vec<PathBuf> = (0..5).map(|i| dir.path().join(format!("f{i}"))).collect();
        for p in &paths {
            std::fs::write(p, b"x").unwrap();
        }
        let open = |p: &PathBuf| {
            let p = p.clone();
            move || File::open(p)
        };
        // Two storages, five files: never more than three open.
        for (i, p) in paths.iter().enumerate() {
            cache.get(((i % 2) as u64, i), open(p)).unwrap();
            assert!(cache.open_count() <= 3);
        }
        assert_eq!(cache.open_count(), 3);
        // The most recently used stays; forgetting a storage closes its own.
        cache.get((0, 4), open(&paths[4])).unwrap();
        cache.forget(1);
        assert_eq!(cache.open_count(), 2);
        cache.forget(0);
        assert_eq!(cache.open_count(), 0);
    }
}
