//! One torrent, with a progress line: the shortest useful embedding.
//!
//! ```text
//! cargo run --example progress -- FILE.torrent [OUTPUT_DIR]
//! ```

use rtc::{AddOptions, Download, Event, Torrent};
use std::io::Write;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: progress FILE.torrent [OUTPUT_DIR]")?;
    let dir = args.next().unwrap_or_else(|| ".".into());
    let torrent = Torrent::from_bytes(&std::fs::read(&path)?)?;
    println!("{}: {} bytes", torrent.name(), torrent.total_length());

    let download = Download::start(torrent, AddOptions::new(dir))?;
    // Events end with `Ended`, which carries the same result as `wait()`.
    for event in download.events() {
        match event {
            Event::Checked { pieces_ok, .. } if pieces_ok > 0 => {
                println!("{pieces_ok} pieces already on disk")
            }
            Event::PieceDone { progress, .. } => {
                print!(
                    "\r{:5.1}%  {} KiB/s  {} peers",
                    progress.fraction() * 100.0,
                    progress.rate / 1024,
                    progress.peers
                );
                std::io::stdout().flush()?;
            }
            Event::Ended(result) => {
                println!();
                match result {
                    Ok(s) => println!("done: {} bytes in {:?}", s.total_bytes, s.elapsed),
                    Err(e) => println!("failed: {e}"),
                }
            }
            _ => {}
        }
    }
    // Every thread, file and socket of the download is closed once this
    // returns.
    download.wait()?;
    Ok(())
}
