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

#[derive(Debug)]
pub enum Error {
    /// A file that rtc did not start holds data that would be overwritten.
    WouldClobber {
        path: PathBuf,
    },
    /// `--repair` was asked for, but the file is not this torrent's size:
    /// it is someone else's file, and it is not touched.
    NotRepairable {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    CreateDir {
        path: PathBuf,
        source: io::Error,
    },
    Open {
        path: PathBuf,
        source: io::Error,
    },
    Write {
        path: PathBuf,
        source: io::Error,
    },
    Read {
        path: PathBuf,
        source: io::Error,
    },
    /// A path in the output tree is a symlink or not a regular file/dir.
    NotAFile {
        path: PathBuf,
    },
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
        }
    }
}

impl std::error::Error for Error {}

/// One file of the torrent as found or created on disk.
struct Slot {
    path: PathBuf,
    /// False when opened read-only and the file does not exist.
    exists: bool,
    /// The file held bytes before we opened it: its pieces may already be
    /// downloaded and are worth verifying.
    had_data: bool,
    /// Its length before we opened it.
    found_len: u64,
}

/// Files of one torrent held open at once. A torrent may have 100,000
/// files; the process may open about 1,000 (`ulimit -n`).
pub const MAX_OPEN_FILES: usize = 64;

/// The files of one torrent. Reads and writes are positional
/// (`pread`/`pwrite`), so `&self` suffices and no seek state is shared;
/// several threads may read while the writer thread writes. Files are
/// opened on first use and at most `MAX_OPEN_FILES` stay open (least
/// recently used closed first).
pub struct Storage {
    layout: Layout,
    files: Vec<Slot>,
    writable: bool,
    /// Shared by the writer and every serving connection: the lock is held
    /// to find or open a file and clone its handle, never across a read or
    /// a write (DESIGN.md, "Open files").
    open: Mutex<OpenFiles>,
}

#[derive(Default)]
struct OpenFiles {
    /// File index -> handle and when it was last used.
    handles: HashMap<usize, (Arc<File>, u64)>,
    clock: u64,
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
    pub fn open(dir: &Path, torrent: &Torrent) -> Result<Storage, Error> {
        std::fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        Self::open_with(dir, torrent, Mode::Create)
    }

    /// Opens whatever files of `torrent` exist under `dir`, read-only,
    /// creating nothing (for `rtc verify` and the session's check of what
    /// is already on disk).
    pub fn open_existing(dir: &Path, torrent: &Torrent) -> Result<Storage, Error> {
        Self::open_with(dir, torrent, Mode::ReadOnly)
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
                    exists: true,
                    had_data: true,
                    found_len: 0,
                })
            })
            .collect::<Result<_, Error>>()?;
        Ok(Storage::new(layout, files, false))
    }

    fn open_with(dir: &Path, torrent: &Torrent, mode: Mode) -> Result<Storage, Error> {
        let mut files = Vec::with_capacity(torrent.files().len());
        for entry in torrent.files() {
            let path = dir.join(entry.path());
            if !check_tree(dir, entry.path(), mode)? {
                files.push(Slot {
                    path,
                    exists: false,
                    had_data: false,
                    found_len: 0,
                });
                continue;
            }
            // O_NOFOLLOW: a symlink planted as the file itself after
            // `check_tree` looked is refused by the open, not followed.
            let mut options = OpenOptions::new();
            options.read(true).custom_flags(libc::O_NOFOLLOW);
            if mode == Mode::Create {
                options.write(true).create(true).truncate(false);
            }
            let file = options.open(&path).map_err(|source| {
                if source.raw_os_error() == Some(libc::ELOOP) {
                    Error::NotAFile { path: path.clone() }
                } else {
                    Error::Open {
                        path: path.clone(),
                        source,
                    }
                }
            })?;
            let len = file
                .metadata()
                .map_err(|source| Error::Open {
                    path: path.clone(),
                    source,
                })?
                .len();
            if mode == Mode::Create && len < entry.length() {
                file.set_len(entry.length())
                    .map_err(|source| Error::Write {
                        path: path.clone(),
                        source,
                    })?;
            }
            // Closed now, reopened on first use: a torrent's files need not
            // all be open at once.
            drop(file);
            files.push(Slot {
                path,
                exists: true,
                had_data: len > 0,
                found_len: len,
            });
        }
        Ok(Storage::new(
            torrent.layout().clone(),
            files,
            mode == Mode::Create,
        ))
    }

    fn new(layout: Layout, files: Vec<Slot>, writable: bool) -> Storage {
        Storage {
            layout,
            files,
            writable,
            open: Mutex::new(OpenFiles::default()),
        }
    }

    /// File `i`, opened if it is not (closing the least recently used one
    /// at the cap). `NotFound` for a file that did not exist read-only.
    fn handle(&self, i: usize) -> io::Result<Arc<File>> {
        if !self.files[i].exists {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        let mut open = self
            .open
            .lock()
            .map_err(|_| io::Error::other("file cache poisoned"))?;
        open.clock += 1;
        let now = open.clock;
        if let Some((file, used)) = open.handles.get_mut(&i) {
            *used = now;
            return Ok(Arc::clone(file));
        }
        if open.handles.len() >= MAX_OPEN_FILES {
            let oldest = open
                .handles
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(&k, _)| k);
            if let Some(k) = oldest {
                // Users still holding a clone keep it open until they finish.
                open.handles.remove(&k);
            }
        }
        let mut options = OpenOptions::new();
        options
            .read(true)
            .write(self.writable)
            .custom_flags(libc::O_NOFOLLOW);
        let file = Arc::new(options.open(&self.files[i].path)?);
        open.handles.insert(i, (Arc::clone(&file), now));
        Ok(file)
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Whether any file this piece touches held data when opened: only such
    /// pieces can already be complete on disk.
    pub fn piece_may_exist(&self, piece: PieceIndex) -> bool {
        self.layout
            .spans(piece)
            .any(|s| self.files[s.file].had_data)
    }

    /// Fails if a file that held data when opened has a piece that is not
    /// in `have`: downloading would overwrite bytes we did not write.
    pub fn check_not_clobbering(
        &self,
        have: &crate::peer::message::Bitfield,
        repair: bool,
    ) -> Result<(), Error> {
        for (i, slot) in self.files.iter().enumerate() {
            let incomplete = slot.had_data
                && self
                    .layout
                    .pieces_of_file(i)
                    .any(|p| !have.has(PieceIndex(p)));
            if !incomplete {
                continue;
            }
            let expected = self.layout.file_length(i);
            if !repair {
                return Err(Error::WouldClobber {
                    path: slot.path.clone(),
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

    /// Whether file `i` exists on disk.
    pub fn file_exists(&self, i: usize) -> bool {
        self.files.get(i).is_some_and(|s| s.exists)
    }

    /// Writes one whole piece at its place, across file boundaries.
    pub fn write_piece(&self, piece: PieceIndex, data: &[u8]) -> Result<(), Error> {
        for span in self.layout.spans(piece) {
            let slot = &self.files[span.file];
            let start = span.piece_offset as usize;
            let chunk = &data[start..start + span.len as usize];
            let write = self
                .handle(span.file)
                .and_then(|f| f.write_all_at(chunk, span.file_offset));
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
            let slot = &self.files[span.file];
            let dst = &mut buf[(from - lo) as usize..(to - lo) as usize];
            let at = span.file_offset + (from - s_lo) as u64;
            let read = self
                .handle(span.file)
                .and_then(|f| f.read_exact_at(dst, at));
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
        buf.resize(self.layout.piece_len(piece) as usize, 0);
        for span in self.layout.spans(piece) {
            let slot = &self.files[span.file];
            if !slot.exists {
                return Ok(false);
            }
            let file = self.handle(span.file).map_err(|source| Error::Read {
                path: slot.path.clone(),
                source,
            })?;
            let start = span.piece_offset as usize;
            let chunk = &mut buf[start..start + span.len as usize];
            match file.read_exact_at(chunk, span.file_offset) {
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
                if mode == Mode::ReadOnly {
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
/// existing files are the user's and are never overwritten.
pub struct Marker {
    path: PathBuf,
}

impl Marker {
    pub fn new(dir: &Path, torrent: &Torrent) -> Marker {
        Marker {
            path: dir.join(format!(".rtc-{}", torrent.info_hash().hex())),
        }
    }

    pub fn exists(&self) -> bool {
        self.path.is_file()
    }

    pub fn create(&self) -> Result<(), Error> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        std::fs::write(&self.path, b"rtc download in progress\n").map_err(|source| Error::Write {
            path: self.path.clone(),
            source,
        })
    }

    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Commands to the writer thread.
pub enum WriteCmd {
    /// Write a verified piece; the thread answers with `(piece, result)`.
    Piece { piece: PieceIndex, data: Vec<u8> },
    /// Finish queued writes and end the thread.
    Shutdown,
}

/// Runs the single writer thread: it owns `storage` and writes pieces in the
/// order they arrive, answering each on `done`.
pub fn spawn_writer(
    storage: std::sync::Arc<Storage>,
    commands: Receiver<WriteCmd>,
    done: Sender<(PieceIndex, Result<(), Error>)>,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("rtc-writer".into())
        .spawn(move || {
            for cmd in commands {
                match cmd {
                    WriteCmd::Piece { piece, data } => {
                        let result = storage.write_piece(piece, &data);
                        drop(data);
                        if done.send((piece, result)).is_err() {
                            return;
                        }
                    }
                    WriteCmd::Shutdown => return,
                }
            }
        })
}
