//! Storage: the torrent's files on disk and the single writer thread that
//! owns them during a download. Owns file creation under the output
//! directory, preallocation and positional reads/writes of whole pieces
//! (which may span several files). Does not decide what to write: only
//! pieces the session has verified are ever sent here.

use crate::geometry::Layout;
use crate::metainfo::Torrent;
use crate::types::PieceIndex;
use crossbeam_channel::{Receiver, Sender};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub enum Error {
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
                write!(f, "cannot create directory {}: {source}", path.display())
            }
            Error::Open { path, source } => write!(f, "cannot open {}: {source}", path.display()),
            Error::Write { path, source } => {
                write!(f, "cannot write {}: {source}", path.display())
            }
            Error::Read { path, source } => write!(f, "cannot read {}: {source}", path.display()),
            Error::NotAFile { path } => write!(
                f,
                "{} exists and is not a regular file or directory (symlinks are not followed)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for Error {}

/// The open files of one torrent. Reads and writes are positional
/// (`pread`/`pwrite`), so `&self` suffices and no seek state is shared.
pub struct Storage {
    layout: Layout,
    files: Vec<(PathBuf, File)>,
}

impl Storage {
    /// Creates (or opens) every file of `torrent` under `dir`, creating
    /// nested directories. Existing files are never truncated: a file shorter
    /// than its torrent length is extended (sparse), a longer one is left
    /// alone. Symlinks inside the output tree are refused so that a torrent
    /// cannot be steered outside `dir` through a link planted there.
    pub fn open(dir: &Path, torrent: &Torrent) -> Result<Storage, Error> {
        std::fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut files = Vec::with_capacity(torrent.files().len());
        for entry in torrent.files() {
            let rel = entry.path();
            let mut cur = dir.to_path_buf();
            let comps: Vec<_> = rel.components().collect();
            for (i, c) in comps.iter().enumerate() {
                cur.push(c);
                let last = i + 1 == comps.len();
                match std::fs::symlink_metadata(&cur) {
                    Ok(m) if m.file_type().is_symlink() => {
                        return Err(Error::NotAFile { path: cur });
                    }
                    Ok(m) if !last && !m.is_dir() => return Err(Error::NotAFile { path: cur }),
                    Ok(m) if last && !m.is_file() => return Err(Error::NotAFile { path: cur }),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
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
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&cur)
                .map_err(|source| Error::Open {
                    path: cur.clone(),
                    source,
                })?;
            let len = file
                .metadata()
                .map_err(|source| Error::Open {
                    path: cur.clone(),
                    source,
                })?
                .len();
            if len < entry.length() {
                file.set_len(entry.length())
                    .map_err(|source| Error::Write {
                        path: cur.clone(),
                        source,
                    })?;
            }
            files.push((cur, file));
        }
        Ok(Storage {
            layout: torrent.layout().clone(),
            files,
        })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Writes one whole piece at its place, across file boundaries.
    pub fn write_piece(&self, piece: PieceIndex, data: &[u8]) -> Result<(), Error> {
        for span in self.layout.spans(piece) {
            let (path, file) = &self.files[span.file];
            let start = span.piece_offset as usize;
            let chunk = &data[start..start + span.len as usize];
            file.write_all_at(chunk, span.file_offset)
                .map_err(|source| Error::Write {
                    path: path.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Reads one whole piece into `buf` (resized to the piece's length).
    pub fn read_piece(&self, piece: PieceIndex, buf: &mut Vec<u8>) -> Result<(), Error> {
        buf.resize(self.layout.piece_len(piece) as usize, 0);
        for span in self.layout.spans(piece) {
            let (path, file) = &self.files[span.file];
            let start = span.piece_offset as usize;
            let chunk = &mut buf[start..start + span.len as usize];
            file.read_exact_at(chunk, span.file_offset)
                .map_err(|source| Error::Read {
                    path: path.clone(),
                    source,
                })?;
        }
        Ok(())
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
