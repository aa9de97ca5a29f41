//! `rtc create`: building a v1 torrent from a file or directory. Owns the
//! file walk, the default piece length and the metainfo layout; hashing
//! runs on a rayon pool, reading through `Storage` so piece/file arithmetic
//! stays in `geometry`. The result is checked by parsing it back with
//! `Torrent::from_bytes`, so rtc never writes a torrent it would refuse.

use crate::bencode::{encode, Dict, Value};
use crate::geometry::Layout;
use crate::metainfo::{MetainfoError, Torrent};
use crate::storage::{self, Storage};
use crate::types::PieceIndex;
use rayon::prelude::*;
use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Default)]
pub struct CreateOptions {
    /// Each tracker becomes its own tier; the first is also `announce`.
    pub trackers: Vec<String>,
    /// Bytes per piece; a power of two from 16 KiB to 64 MiB. `None`
    /// picks one (see `default_piece_length`).
    pub piece_length: Option<u32>,
    pub private: bool,
    pub comment: Option<String>,
}

#[derive(Debug)]
pub enum CreateError {
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file or directory name that is not UTF-8 or not a plain name
    /// (one a torrent may not hold: a backslash, say), and why.
    BadName(PathBuf, &'static str),
    /// No bytes to share (only empty files, or an empty directory).
    Empty,
    BadPieceLength(u32),
    /// A file changed size while it was being hashed.
    Changed(PathBuf),
    /// The built torrent did not pass our own validation (a bug).
    Invalid(MetainfoError),
}

impl fmt::Display for CreateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CreateError::Io { path, source } => write!(f, "create: {}: {source}", path.display()),
            CreateError::BadName(p, why) => write!(
                f,
                "create: {} is not a usable file name ({why})",
                crate::text::escaped_path(p)
            ),
            CreateError::Empty => f.write_str("create: nothing to share (no non-empty files)"),
            CreateError::BadPieceLength(n) => write!(
                f,
                "create: piece length {n} must be a power of two from 16 KiB to 64 MiB"
            ),
            CreateError::Changed(p) => write!(f, "create: {} changed while hashing", p.display()),
            CreateError::Invalid(e) => write!(f, "create: built an invalid torrent: {e}"),
        }
    }
}

impl std::error::Error for CreateError {}

/// Aim for about 1500 pieces: big enough pieces keep the .torrent small,
/// small enough ones keep the memory per piece in flight low. Clamped to
/// 16 KiB ..= 16 MiB.
pub fn default_piece_length(total: u64) -> u32 {
    let want = total.div_ceil(1500).next_power_of_two();
    want.clamp(16 * 1024, 16 * 1024 * 1024) as u32
}

/// Files under `root` (or `root` itself) in sorted order, with their path
/// components relative to `root`. Symlinks are skipped: a torrent shares
/// what is here, not what a link points to.
fn walk(root: &Path) -> Result<Vec<(Vec<String>, PathBuf, u64)>, CreateError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CreateError::Io { path, source }
    };
    let meta = std::fs::symlink_metadata(root).map_err(io(root))?;
    if meta.is_file() {
        return Ok(vec![(Vec::new(), root.to_path_buf(), meta.len())]);
    }
    let mut out = Vec::new();
    let mut stack = vec![(Vec::<String>::new(), root.to_path_buf())];
    while let Some((rel, dir)) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .map_err(io(&dir))?
            .collect::<Result<_, _>>()
            .map_err(io(&dir))?;
        entries.sort_by_key(|e| e.file_name());
        let mut subdirs = Vec::new();
        for e in entries {
            let path = e.path();
            let name = e
                .file_name()
                .into_string()
                .map_err(|_| CreateError::BadName(path.clone(), "not UTF-8"))?;
            crate::metainfo::check_component(&name)
                .map_err(|why| CreateError::BadName(path.clone(), why))?;
            let ft = e.file_type().map_err(io(&path))?;
            let mut r = rel.clone();
            r.push(name);
            if ft.is_dir() {
                subdirs.push((r, path));
            } else if ft.is_file() {
                let len = e.metadata().map_err(io(&path))?.len();
                out.push((r, path, len));
            } else {
                log::warn!("create: skipping {} (not a regular file)", path.display());
            }
        }
        // Depth-first in name order: push in reverse so the first pops first.
        stack.extend(subdirs.into_iter().rev());
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Builds the .torrent bytes for `root`.
pub fn create(
    root: &Path,
    opts: &CreateOptions,
    pool: &rayon::ThreadPool,
) -> Result<(Vec<u8>, Torrent), CreateError> {
    let name = root
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| CreateError::BadName(root.to_path_buf(), "not UTF-8"))?
        .to_string();
    crate::metainfo::check_component(&name)
        .map_err(|why| CreateError::BadName(root.to_path_buf(), why))?;
    let files = walk(root)?;
    let total: u64 = files.iter().map(|f| f.2).sum();
    if total == 0 {
        return Err(CreateError::Empty);
    }
    let piece_length = match opts.piece_length {
        Some(n) if n.is_power_of_two() && (16 * 1024..=64 * 1024 * 1024).contains(&n) => n,
        Some(n) => return Err(CreateError::BadPieceLength(n)),
        None => default_piece_length(total),
    };
    let lengths: Vec<u64> = files.iter().map(|f| f.2).collect();
    let layout = Layout::new(piece_length, &lengths).ok_or(CreateError::Empty)?;
    let storage = Storage::open_paths(layout.clone(), files.iter().map(|f| f.1.clone()).collect())
        .map_err(storage_err)?;
    let hashes: Vec<[u8; 20]> = pool.install(|| {
        (0..layout.piece_count())
            .into_par_iter()
            .map_init(Vec::new, |buf, i| {
                if !storage
                    .read_piece(PieceIndex(i), buf)
                    .map_err(storage_err)?
                {
                    return Err(CreateError::Changed(root.to_path_buf()));
                }
                Ok(crate::hash::sha1(buf))
            })
            .collect::<Result<_, _>>()
    })?;
    let pieces: Vec<u8> = hashes.concat();

    let mut info = Dict::new();
    info.insert(b"name", Value::Bytes(name.as_bytes()));
    info.insert(b"piece length", Value::Int(piece_length as i64));
    info.insert(b"pieces", Value::Bytes(&pieces));
    if opts.private {
        info.insert(b"private", Value::Int(1));
    }
    let file_list: Vec<Value> = files
        .iter()
        .map(|(rel, _, len)| {
            let mut f = Dict::new();
            f.insert(b"length", Value::Int(*len as i64));
            f.insert(
                b"path",
                Value::List(rel.iter().map(|c| Value::Bytes(c.as_bytes())).collect()),
            );
            Value::Dict(f)
        })
        .collect();
    if files.len() == 1 && files[0].0.is_empty() {
        info.insert(b"length", Value::Int(total as i64));
    } else {
        info.insert(b"files", Value::List(file_list));
    }
    let mut top = Dict::new();
    if let Some(first) = opts.trackers.first() {
        top.insert(b"announce", Value::Bytes(first.as_bytes()));
    }
    if opts.trackers.len() > 1 {
        let tiers = opts
            .trackers
            .iter()
            .map(|t| Value::List(vec![Value::Bytes(t.as_bytes())]))
            .collect();
        top.insert(b"announce-list", Value::List(tiers));
    }
    if let Some(c) = &opts.comment {
        top.insert(b"comment", Value::Bytes(c.as_bytes()));
    }
    let created_by = concat!("rtc/", env!("CARGO_PKG_VERSION"));
    top.insert(b"created by", Value::Bytes(created_by.as_bytes()));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    top.insert(b"creation date", Value::Int(now));
    top.insert(b"info", Value::Dict(info));
    let bytes = encode(&Value::Dict(top));
    let torrent = Torrent::from_bytes(&bytes).map_err(CreateError::Invalid)?;
    Ok((bytes, torrent))
}

fn storage_err(e: storage::Error) -> CreateError {
    match e {
        storage::Error::Open { path, source } | storage::Error::Read { path, source } => {
            CreateError::Io { path, source }
        }
        other => CreateError::Io {
            path: PathBuf::new(),
            source: std::io::Error::other(other.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_piece_lengths() {
        assert_eq!(default_piece_length(1), 16 * 1024);
        assert_eq!(default_piece_length(1 << 30), 1 << 20);
        assert_eq!(default_piece_length(1 << 40), 16 << 20);
    }

    #[test]
    fn single_file_and_directory_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let f = dir.path().join("one.bin");
        std::fs::write(&f, vec![7u8; 40000]).unwrap();
        let opts = CreateOptions {
            trackers: vec!["http://a/announce".into(), "udp://b:1".into()],
            piece_length: Some(16384),
            private: true,
            comment: Some("hi".into()),
        };
        let (_, t) = create(&f, &opts, &pool).unwrap();
        assert_eq!(t.name(), "one.bin");
        assert_eq!(t.total_length(), 40000);
        assert_eq!(t.piece_count(), 3);
        assert!(t.private() && !t.is_multi_file());
        assert_eq!(
            t.trackers(),
            vec![
                vec!["http://a/announce".to_string()],
                vec!["udp://b:1".to_string()]
            ]
        );
        let want = crate::hash::sha1(&[7u8; 16384]);
        assert_eq!(t.piece_hash(PieceIndex(0)), Some(&want));

        let root = dir.path().join("tree");
        std::fs::create_dir_all(root.join("b/c")).unwrap();
        std::fs::write(root.join("b/c/x"), b"xyz").unwrap();
        std::fs::write(root.join("a"), vec![1u8; 20000]).unwrap();
        std::fs::write(root.join("empty"), b"").unwrap();
        let (_, t) = create(&root, &CreateOptions::default(), &pool).unwrap();
        let paths: Vec<_> = t.files().iter().map(|f| f.path().to_path_buf()).collect();
        assert_eq!(
            paths,
            vec![
                PathBuf::from("tree/a"),
                PathBuf::from("tree/b/c/x"),
                PathBuf::from("tree/empty")
            ]
        );
        assert_eq!(t.total_length(), 20003);
        assert!(matches!(
            create(
                &root,
                &CreateOptions {
                    piece_length: Some(1000),
                    ..Default::default()
                },
                &pool
            ),
            Err(CreateError::BadPieceLength(1000))
        ));
        std::fs::write(dir.path().join("nothing"), b"").unwrap();
        assert!(matches!(
            create(
                &dir.path().join("nothing"),
                &CreateOptions::default(),
                &pool
            ),
            Err(CreateError::Empty)
        ));
    }
}
