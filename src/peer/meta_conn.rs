//! A connection that only fetches a torrent's metadata (BEP 9) for a
//! magnet link, on its own OS thread over a blocking `TcpStream`: the
//! BitTorrent handshake with the extension bit, the extension handshake
//! (BEP 10), then `ut_metadata` requests as the session asks and the
//! answers handed back. It owns the socket and nothing else: which piece
//! to ask whom, and whether to believe the bytes, is `session::metadata`'s.
//! Once the metadata is verified the session closes these connections and
//! dials the peers again as ordinary ones.

use super::conn::{dial, read_handshake, Error, Limits, RecvBuf};
use super::extension::{self, ExtHandshake, MetadataMsg, UT_METADATA_ID};
use super::message::{self, decode_frame, Handshake, Message};
use super::{Closer, ConnId};
use crate::types::{InfoHash, PeerId};
use crossbeam_channel::{Receiver, Sender};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

/// How often a metadata connection looks at its commands while the peer
/// is silent.
const META_POLL: std::time::Duration = std::time::Duration::from_millis(5);

/// Commands from the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MetaCommand {
    /// Ask the peer for this 16 KiB piece of the info dict.
    Request(u32),
    /// Close the connection and end the thread.
    Shutdown,
}

/// Events to the session.
#[derive(Debug)]
pub(crate) enum MetaEvent {
    /// The peer's extension handshake (the first one, and any later one).
    Ready { id: ConnId, ext: ExtHandshake },
    /// A piece of the info dict, unverified.
    Data {
        id: ConnId,
        piece: u32,
        total_size: u32,
        data: Vec<u8>,
    },
    /// The peer will not send this piece.
    Reject { id: ConnId, piece: u32 },
    /// The thread ended (`error` is `None` for a shutdown).
    Exited {
        id: ConnId,
        addr: SocketAddr,
        error: Option<Error>,
        connected: bool,
    },
}

/// Everything a metadata connection needs, moved into its thread.
pub(crate) struct MetaParams {
    pub id: ConnId,
    pub addr: SocketAddr,
    pub info_hash: InfoHash,
    pub peer_id: PeerId,
    pub events: Sender<MetaEvent>,
    pub commands: Receiver<MetaCommand>,
    pub limits: Limits,
    pub closer: Closer,
    /// The port we accept peers on, told in the extension handshake.
    pub listen_port: Option<u16>,
    /// Dropped when the thread ends: the session's connection permit.
    #[allow(dead_code)] // held, never read
    pub hold: Box<dyn Send>,
}

pub(crate) fn spawn(p: MetaParams) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("rtc-meta-{}", p.addr))
        .spawn(move || {
            let (id, addr, events) = (p.id, p.addr, p.events.clone());
            let mut connected = false;
            let result = run(&p, &mut connected);
            let error = result.err();
            if let Some(e) = &error {
                log::debug!("metadata peer {addr}: {e}");
            }
            let _ = events.send(MetaEvent::Exited {
                id,
                addr,
                error,
                connected,
            });
        })
}

fn run(p: &MetaParams, connected: &mut bool) -> Result<(), Error> {
    let limits = &p.limits;
    let Some(mut stream) = dial(p.addr, limits, &p.closer)? else {
        return Ok(()); // shut down while connecting
    };
    let mut ours = Handshake::new(p.info_hash, p.peer_id);
    extension::set_extension_bit(&mut ours.reserved);
    stream.write_all(&ours.encode()).map_err(Error::Io)?;
    let theirs = Handshake::decode(
        &read_handshake(&mut stream, limits.handshake)?,
        Some(p.info_hash),
    )?;
    if theirs.peer_id == p.peer_id {
        return Err(Error::SelfConnection);
    }
    if !extension::has_extension_bit(&theirs.reserved) {
        return Err(Error::NoExtensions);
    }
    *connected = true;
    let mut out = Vec::with_capacity(256);
    let hello = ExtHandshake::ours(None, p.listen_port, Some(p.addr.ip()));
    message::encode(
        &Message::Extended {
            id: 0,
            payload: &hello.encode(),
        },
        &mut out,
    );
    stream.write_all(&out).map_err(Error::Io)?;
    // A short poll: the session's next requests follow each answer at
    // once, not a read timeout later (a few threads, for seconds).
    stream
        .set_read_timeout(Some(limits.poll.min(META_POLL)))
        .map_err(Error::Io)?;

    // Peers send their bitfield first: as large as the largest info dict
    // we accept allows (a piece hash is 20 bytes); our own messages are
    // 16 KiB metadata pieces.
    let max_frame = message::max_frame_for(extension::MAX_METADATA_SIZE / 20);
    let mut rx = RecvBuf::new(max_frame as usize + 4);
    let mut their_id: Option<u8> = None;
    let mut theirs_ext: Option<ExtHandshake> = None;
    let connected_at = Instant::now();
    let mut last_recv = Instant::now();
    loop {
        while let Ok(cmd) = p.commands.try_recv() {
            match cmd {
                MetaCommand::Shutdown => return Ok(()),
                MetaCommand::Request(piece) => {
                    let Some(to) = their_id else { continue };
                    send(&mut stream, &mut out, to, MetadataMsg::Request { piece })?;
                }
            }
        }
        match stream.read(rx.space()) {
            Ok(0) => return Err(Error::Closed),
            Ok(n) => {
                rx.filled(n);
                last_recv = Instant::now();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if last_recv.elapsed() >= limits.idle {
                    return Err(Error::Idle(limits.idle));
                }
                // A peer with nothing for a magnet must not hold one of
                // the few metadata slots.
                if theirs_ext.is_none() && connected_at.elapsed() >= limits.handshake {
                    return Err(Error::NoExtensions);
                }
                continue;
            }
            Err(e) => return Err(Error::Io(e)),
        }
        while let Some((msg, used)) = decode_frame(rx.data(), max_frame)? {
            match msg {
                Message::Extended { id: 0, payload } => {
                    // BEP 10: a later handshake only changes what it names.
                    let ext = theirs_ext.get_or_insert_with(ExtHandshake::default);
                    ext.update(payload).map_err(Error::Extension)?;
                    let ext = ext.clone();
                    their_id = ext.ut_metadata;
                    if p.events.send(MetaEvent::Ready { id: p.id, ext }).is_err() {
                        return Err(Error::SessionGone);
                    }
                }
                Message::Extended { id, payload } if id == UT_METADATA_ID => {
                    let Some(msg) = MetadataMsg::decode(payload).map_err(Error::Extension)? else {
                        rx.consume(used);
                        continue;
                    };
                    let ev = match msg {
                        MetadataMsg::Data {
                            piece,
                            total_size,
                            data,
                        } => MetaEvent::Data {
                            id: p.id,
                            piece,
                            total_size,
                            data: data.to_vec(),
                        },
                        MetadataMsg::Reject { piece } => MetaEvent::Reject { id: p.id, piece },
                        // We have nothing to give yet.
                        MetadataMsg::Request { piece } => {
                            if let Some(to) = their_id {
                                send(&mut stream, &mut out, to, MetadataMsg::Reject { piece })?;
                            }
                            rx.consume(used);
                            continue;
                        }
                    };
                    if p.events.send(ev).is_err() {
                        return Err(Error::SessionGone);
                    }
                }
                // Bitfields, haves, chokes, other extensions: not needed
                // to fetch metadata.
                _ => {}
            }
            rx.consume(used);
        }
        rx.compact();
    }
}

/// Sends one `ut_metadata` message to the peer's id `to`.
fn send(
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    to: u8,
    msg: MetadataMsg<'_>,
) -> Result<(), Error> {
    out.clear();
    let payload = msg.encode();
    message::encode(
        &Message::Extended {
            id: to,
            payload: &payload,
        },
        out,
    );
    stream.write_all(out).map_err(Error::Io)
}
