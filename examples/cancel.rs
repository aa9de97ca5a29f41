//! Cancelling a download from another thread: here a timer thread gives
//! up after the given number of seconds (a GUI would do it from a button).
//!
//! ```text
//! cargo run --example cancel -- FILE.torrent SECONDS [OUTPUT_DIR]
//! ```

use rtc::{AddOptions, Download, Error, Torrent};
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: cancel FILE.torrent SECONDS [OUTPUT_DIR]";
    let path = args.next().ok_or(usage)?;
    let secs: u64 = args.next().ok_or(usage)?.parse()?;
    let dir = args.next().unwrap_or_else(|| ".".into());
    let torrent = Torrent::from_bytes(&std::fs::read(&path)?)?;
    let download = Download::start(torrent, AddOptions::new(dir))?;

    // A CancelHandle is cheap to clone and never keeps the download alive.
    let cancel = download.cancel_handle();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(secs));
        cancel.cancel();
    });

    match download.wait() {
        Ok(s) => println!("finished in time: {} bytes", s.total_bytes),
        // Verified pieces are on disk: running again resumes from them.
        Err(Error::Cancelled) => println!("cancelled after {secs} s"),
        Err(e) => return Err(e.into()),
    }
    Ok(())
}
