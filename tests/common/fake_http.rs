//! A fake HTTP tracker for faults a real tracker will not produce on
//! demand: hanging, answering garbage, redirecting, answering with a body
//! the test computes (e.g. a huge peer list).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Computes a response body from the request's head.
pub type Responder = Box<dyn Fn(&str) -> Vec<u8> + Send>;

/// What the fake tracker does with each request.
pub enum Answer {
    /// Accept the connection and never answer.
    Hang,
    /// Answer 200 with this body.
    Body(&'static [u8]),
    /// Answer 302 to this URL (query string carried over).
    Redirect(String),
    /// Answer 200 with the body this returns for the request's head
    /// (request line and headers).
    Dynamic(Responder),
}

/// A fake HTTP tracker on 127.0.0.1; stops with the test (Drop) or after
/// its lifetime (60 s from `start`).
pub struct FakeTracker {
    pub url: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeTracker {
    pub fn start(answer: Answer) -> FakeTracker {
        FakeTracker::start_for(answer, Duration::from_secs(60))
    }

    /// As `start`, serving for at most `lifetime`.
    pub fn start_for(answer: Answer, lifetime: Duration) -> FakeTracker {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let url = format!("http://{}/announce", l.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let st = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            let end = Instant::now() + lifetime;
            while !st.load(Ordering::SeqCst) && Instant::now() < end {
                match l.accept() {
                    Ok((mut s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                        // A client that stops reading cannot hold us forever.
                        s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
                        let mut req = [0u8; 4096];
                        let n = if matches!(answer, Answer::Hang) {
                            0
                        } else {
                            s.read(&mut req).unwrap_or(0)
                        };
                        let head = String::from_utf8_lossy(&req[..n]).into_owned();
                        let ok = |s: &mut std::net::TcpStream, body: &[u8]| {
                            let _ = write!(
                                s,
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                body.len()
                            );
                            let _ = s.write_all(body);
                        };
                        match &answer {
                            Answer::Hang => held.push(s), // accept, never answer
                            Answer::Body(body) => ok(&mut s, body),
                            Answer::Dynamic(f) => ok(&mut s, &f(&head)),
                            Answer::Redirect(to) => {
                                // Keep the query string: trackers need it.
                                let path = head.split_whitespace().nth(1).unwrap_or("/");
                                let query = path.split_once('?').map_or("", |(_, q)| q);
                                let _ = write!(
                                    s,
                                    "HTTP/1.1 302 Found\r\nLocation: {to}?{query}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                                );
                            }
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        FakeTracker {
            url,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeTracker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
