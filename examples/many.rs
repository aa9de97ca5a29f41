//! Many torrents in one `Session`: one listening port, one hashing pool,
//! one budget of peer connections and open files for all of them.
//!
//! ```text
//! cargo run --example many -- OUTPUT_DIR A.torrent B.torrent ...
//! ```

use rtc::{AddOptions, Session, SessionOptions, Torrent};
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or("usage: many OUTPUT_DIR A.torrent B.torrent ...")?;
    let session = Session::new(
        SessionOptions::default()
            .max_connections(100)
            .max_open_files(64),
    )?;
    println!("listening on port {:?}", session.port());

    let mut downloads = Vec::new();
    for path in args {
        let torrent = Torrent::from_bytes(&std::fs::read(&path)?)?;
        let name = torrent.name().to_string();
        // Each in its own directory; adding while others run is fine.
        let opts = AddOptions::new(format!("{dir}/{name}"));
        downloads.push((name, session.add(torrent, opts)?));
    }

    // Poll progress from this thread while the downloads run on theirs.
    while downloads.iter().any(|(_, d)| !d.is_finished()) {
        for (name, d) in &downloads {
            let p = d.progress();
            println!("{name}: {:5.1}% ({} peers)", p.fraction() * 100.0, p.peers);
        }
        println!("{} connections in the session", session.connections());
        std::thread::sleep(Duration::from_secs(1));
    }
    let mut failed = 0;
    for (name, d) in downloads {
        match d.wait() {
            Ok(s) => println!("{name}: {} bytes verified", s.total_bytes),
            Err(e) => {
                println!("{name}: {e}");
                failed += 1;
            }
        }
    }
    // Returns once every thread the session started has ended.
    session.shutdown();
    if failed > 0 {
        return Err(format!("{failed} downloads failed").into());
    }
    Ok(())
}
