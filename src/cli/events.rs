//! The NDJSON event sequence of one download (`rtc --json`): turns the
//! library's events and snapshots into `start`, `metadata`, `checked`,
//! `peer`, `tracker_error`, `progress`, `file_done`, `done`, `seeding` and
//! `stopped` lines, keeping the order md/json.md promises (`start` first;
//! every `file_done` before `done`; `done` last unless seeding follows,
//! then `stopped` last). `error` lines are written by `cli::main`. Owns no
//! thread: the download loop calls it.

use super::json;
use crate::{Download, Event, InfoHash, Summary};
use serde_json::json;
use std::time::{Duration, Instant};

/// At most one `progress` line per this long.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// How often files are checked for completion: the check costs time
/// linear in the piece count, and the loop turns on every event.
const FILES_EVERY: Duration = Duration::from_millis(250);

pub(super) struct Lines {
    ih: InfoHash,
    seeding: bool,
    /// `metadata` written (or not needed: a .torrent).
    have_torrent: bool,
    /// Per file: `file_done` written (or not to be: the file is not
    /// selected).
    files_done: Vec<bool>,
    lengths: Vec<u64>,
    /// Each file's path, as `start` (or `metadata`) wrote it.
    paths: Vec<serde_json::Value>,
    last_progress: Option<Instant>,
    last_files: Option<Instant>,
    /// `done` (and `seeding`) written while the download goes on seeding.
    done: bool,
    /// The data on disk has been checked (`checked` written): before
    /// that, no file is known complete (an empty one is not created yet).
    checked: bool,
}

impl Lines {
    /// Writes `start`: the whole torrent if it is known (a .torrent), else
    /// the info hash and the magnet's name.
    /// `known` comes with the files selected in it.
    pub(super) fn new(dl: &Download, known: Option<&Known>, seeding: bool) -> Lines {
        let ih = dl.info_hash();
        let mut l = Lines {
            ih,
            seeding,
            have_torrent: false,
            files_done: Vec::new(),
            lengths: Vec::new(),
            paths: Vec::new(),
            last_progress: None,
            last_files: None,
            done: false,
            checked: false,
        };
        match known {
            Some((t, selected)) => {
                let (t, selected) = (t, selected.as_slice());
                let mut line = with_selection(t, selected);
                line["metadata"] = true.into();
                json::emit_with_files("start", line, json::files(t));
                l.know(t, selected);
            }
            None => json::emit(
                "start",
                json!({ "info_hash": ih.to_string(), "metadata": false }),
            ),
        }
        l
    }

    fn know(&mut self, t: &crate::Torrent, selected: &[bool]) {
        self.have_torrent = true;
        self.lengths = t.files().iter().map(|f| f.length()).collect();
        self.files_done = (0..self.lengths.len())
            .map(|i| !selected.get(i).copied().unwrap_or(true))
            .collect();
        self.paths = t.files().iter().map(|f| json::path(f.path())).collect();
    }

    fn on_event(&mut self, dl: &Download, ev: &Event) {
        let ih = self.ih.to_string();
        match ev {
            Event::Metadata { .. } => self.metadata(dl),
            Event::Checked {
                pieces_ok,
                pieces_total,
            } => {
                self.checked = true;
                json::emit(
                    "checked",
                    json!({ "info_hash": ih, "pieces_ok": pieces_ok, "pieces_total": pieces_total }),
                );
            }
            Event::PeerConnected(addr) => json::emit(
                "peer",
                json!({
                    "info_hash": ih, "action": "connected", "addr": addr.to_string(),
                    "peers": dl.progress().peers,
                }),
            ),
            Event::PeerDropped { addr, reason } => json::emit(
                "peer",
                json!({
                    "info_hash": ih, "action": "dropped", "addr": addr.to_string(),
                    "reason": reason, "peers": dl.progress().peers,
                }),
            ),
            Event::TrackerError(message) => json::emit(
                "tracker_error",
                json!({ "info_hash": ih, "message": message }),
            ),
            _ => {}
        }
    }

    /// A magnet's metadata: the whole torrent, once.
    fn metadata(&mut self, dl: &Download) {
        if self.have_torrent {
            return;
        }
        // The selection is set before the torrent: both are there, or
        // neither.
        if let (Some(t), Some(sel)) = (dl.torrent(), dl.selected_files()) {
            let mut flags = vec![false; t.files().len()];
            for i in sel {
                flags[i] = true;
            }
            json::emit_with_files("metadata", with_selection(&t, &flags), json::files(&t));
            self.know(&t, &flags);
        }
    }

    /// `file_done` for files that completed, in index order.
    fn files(&mut self, progress: &[u64]) {
        for (i, (&got, &len)) in progress.iter().zip(&self.lengths).enumerate() {
            if !self.files_done[i] && got >= len {
                self.files_done[i] = true;
                let path = self.paths[i].clone();
                json::emit(
                    "file_done",
                    json!({ "info_hash": self.ih.to_string(), "index": i, "path": path, "length": len }),
                );
            }
        }
    }

    /// Handles `first` (the event that woke the loop, if any) and every
    /// event waiting behind it, then runs `tick`.
    pub(super) fn pump(&mut self, dl: &Download, first: Option<Event>) {
        let rest = std::iter::from_fn(|| dl.events().try_recv().ok());
        for ev in first.into_iter().chain(rest) {
            self.on_event(dl, &ev);
        }
        self.tick(dl);
    }

    /// Handles the events waiting, without a tick: for a download that
    /// ended before the loop read them (`checked` must not be lost).
    pub(super) fn drain(&mut self, dl: &Download) {
        while let Ok(ev) = dl.events().try_recv() {
            self.on_event(dl, &ev);
        }
    }

    /// Called every turn of the download loop (at least every 200 ms).
    fn tick(&mut self, dl: &Download) {
        if !self.have_torrent {
            self.metadata(dl);
        }
        let now = Instant::now();
        if self.have_torrent
            && self.checked
            && self
                .last_files
                .is_none_or(|t| now.duration_since(t) >= FILES_EVERY)
        {
            self.last_files = Some(now);
            self.files(&dl.file_progress());
        }
        let p = dl.progress();
        if self
            .last_progress
            .is_none_or(|t| now.duration_since(t) >= PROGRESS_EVERY)
        {
            self.last_progress = Some(now);
            json::emit("progress", json::progress(self.ih, &p));
        }
        let complete = self.have_torrent && self.files_done.iter().all(|&d| d);
        if self.seeding && complete && !self.done {
            self.done = true;
            json::emit(
                "done",
                json!({
                    "info_hash": self.ih.to_string(), "total_bytes": p.total_bytes,
                    "uploaded_bytes": p.uploaded_bytes, "elapsed_secs": p.elapsed.as_secs_f64(),
                }),
            );
            json::emit("seeding", json!({ "info_hash": self.ih.to_string() }));
        }
    }

    /// The download ended well: the last `file_done` lines, a last
    /// `progress` with the final counts (so a reader following it sees
    /// the end, however soon after the previous one), then `done` (or,
    /// after seeding, `stopped`) with the summary.
    pub(super) fn finish(
        &mut self,
        ih: InfoHash,
        files: &[u64],
        last: &crate::Progress,
        summary: &Summary,
    ) {
        if self.have_torrent {
            self.files(files);
        }
        json::emit("progress", json::progress(ih, last));
        if self.seeding {
            if !self.done {
                self.done = true;
                let mut line = json::summary(ih, summary);
                line["seeded"] = false.into();
                json::emit("done", line);
            }
            json::emit("stopped", json::summary(ih, summary));
        } else {
            json::emit("done", json::summary(ih, summary));
        }
    }
}

/// The torrent object with the indices of the files being downloaded
/// (its files go with it, see [`json::emit_with_files`]).
fn with_selection(t: &crate::Torrent, selected: &[bool]) -> serde_json::Value {
    let mut line = json::torrent(t);
    line["selection"] = (0..t.files().len())
        .filter(|&i| selected.get(i).copied().unwrap_or(true))
        .collect();
    line
}

/// A torrent known before its download starts, with its files selected.
pub(super) type Known = (crate::Torrent, Vec<bool>);

/// The torrent a download starts with, when its source already is one,
/// and the files `selection` picks in it (an unusable selection is an
/// error before anything starts).
pub(super) fn known(
    source: &crate::Source,
    selection: &crate::FileSelection,
) -> Result<Option<Known>, crate::SelectError> {
    match source {
        crate::Source::Torrent(t) => Ok(Some((t.clone(), selection.resolve(t)?))),
        _ => Ok(None),
    }
}
