//! The DHT state file: our node id and the good nodes of the last run,
//! bencoded (`id`, compact `nodes` and `nodes6`, and a `rtc-dht` version
//! tag). Encoding and decoding are pure; `load` and `save` are the only
//! file access, and saving replaces the file atomically (write, then
//! rename), so a crash leaves the old file or the new one.

use super::id::NodeId;
use super::krpc::{self, NodeAddr};
use crate::bencode::{self, Dict, Value};
use std::path::Path;

const VERSION: &[u8] = b"rtc-dht-1";
/// Nodes saved at most.
pub(crate) const MAX_SAVED: usize = 200;
/// A state file longer than this is not ours.
const MAX_FILE: u64 = 64 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Saved {
    pub(crate) id: NodeId,
    pub(crate) nodes: Vec<NodeAddr>,
}

pub(crate) fn encode(saved: &Saved) -> Vec<u8> {
    let msg = krpc::Response {
        id: saved.id,
        nodes: saved
            .nodes
            .iter()
            .filter(|n| n.addr.is_ipv4())
            .take(MAX_SAVED)
            .copied()
            .collect(),
        nodes6: saved
            .nodes
            .iter()
            .filter(|n| n.addr.is_ipv6())
            .take(MAX_SAVED)
            .copied()
            .collect(),
        ..Default::default()
    };
    // The compact node lists are KRPC's; wrap them in our own dictionary.
    let (v4, v6) = krpc::compact_nodes(&msg);
    let mut d = Dict::new();
    d.insert(b"rtc-dht", Value::Bytes(VERSION));
    d.insert(b"id", Value::Bytes(&saved.id.0));
    d.insert(b"nodes", Value::Bytes(&v4));
    d.insert(b"nodes6", Value::Bytes(&v6));
    bencode::encode(&Value::Dict(d))
}

pub(crate) fn decode(data: &[u8]) -> Result<Saved, String> {
    let v = bencode::decode(data).map_err(|e| e.to_string())?;
    let d = v.as_dict().ok_or("not a dictionary")?;
    if d.get(b"rtc-dht").and_then(Value::as_bytes) != Some(VERSION) {
        return Err("not an rtc DHT state file".into());
    }
    let id = d
        .get(b"id")
        .and_then(Value::as_bytes)
        .and_then(|b| <[u8; 20]>::try_from(b).ok())
        .ok_or("no node id")?;
    let list = |key: &[u8], v6| {
        d.get(key)
            .and_then(Value::as_bytes)
            .map_or_else(Vec::new, |b| krpc::parse_nodes_upto(b, v6, MAX_SAVED))
    };
    let mut nodes = list(b"nodes", false);
    nodes.extend(list(b"nodes6", true));
    Ok(Saved {
        id: NodeId(id),
        nodes,
    })
}

/// Reads the state file: a regular file (not a link, device or pipe,
/// which could block the open or never end), at most `MAX_FILE` bytes.
fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK: opening a FIFO does not wait for a writer.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut data = Vec::new();
    file.take(MAX_FILE + 1).read_to_end(&mut data)?;
    if data.len() as u64 > MAX_FILE {
        return Err(std::io::Error::other("too long"));
    }
    Ok(data)
}

/// The saved state, or `None` (with a warning unless the file is simply
/// not there yet).
pub(crate) fn load(path: &Path) -> Option<Saved> {
    let shown = crate::text::escaped_path(path);
    let data = match read_bounded(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        other => other,
    };
    match data.map_err(|e| e.to_string()).and_then(|d| decode(&d)) {
        Ok(s) => Some(s),
        Err(e) => {
            log::warn!("dht: ignoring state file {shown}: {e}");
            None
        }
    }
}

pub(crate) fn save(path: &Path, saved: &Saved) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    // A fresh name, created (never opened through a link planted there),
    // then renamed over the old file (or over a link planted as it).
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    let suffix = crate::types::random_u64().map_err(std::io::Error::other)?;
    tmp.push(format!(".{suffix:016x}.tmp"));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&encode(saved)));
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_foreign_files() {
        let saved = Saved {
            id: NodeId([9; 20]),
            nodes: vec![
                NodeAddr {
                    id: NodeId([1; 20]),
                    addr: "127.0.0.1:6881".parse().unwrap(),
                },
                NodeAddr {
                    id: NodeId([2; 20]),
                    addr: "[::1]:6882".parse().unwrap(),
                },
            ],
        };
        assert_eq!(decode(&encode(&saved)).unwrap(), saved);
        assert!(decode(b"d2:id20:aaaaaaaaaaaaaaaaaaaae").is_err());
        assert!(decode(b"garbage").is_err());
        assert!(decode(b"d7:rtc-dht9:rtc-dht-12:id3:abce").is_err());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dht.dat");
        assert_eq!(load(&path), None);
        save(&path, &saved).unwrap();
        assert_eq!(load(&path), Some(saved.clone()));
        std::fs::write(&path, b"d4:spam4:eggse").unwrap();
        assert_eq!(load(&path), None);
        // Hostile files: a FIFO (would block), a link to a device (endless),
        // a directory, a long file: ignored at once.
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.unwrap().success());
        assert_eq!(load(&fifo), None);
        let link = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        assert_eq!(load(&link), None);
        assert_eq!(load(dir.path()), None);
        let long = dir.path().join("long");
        std::fs::write(&long, vec![b'x'; MAX_FILE as usize + 1]).unwrap();
        assert_eq!(load(&long), None);
        // A link planted as the state file is replaced, its target left
        // alone.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"mine").unwrap();
        let state = dir.path().join("state.dat");
        std::os::unix::fs::symlink(&victim, &state).unwrap();
        save(&state, &saved).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"mine");
        assert_eq!(load(&state), Some(saved));
    }
}
