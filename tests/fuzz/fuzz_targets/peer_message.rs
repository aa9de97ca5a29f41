//! Peer-wire decoding never panics and never accepts a frame longer than
//! the limit; the first 68 bytes also go through the handshake parser.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rtc::fuzzing::{decode_frame, Bitfield, Handshake, MAX_FRAME};

fuzz_target!(|data: &[u8]| {
    if data.len() >= 68 {
        let mut hs = [0u8; 68];
        hs.copy_from_slice(&data[..68]);
        let _ = Handshake::decode(&hs, None);
    }
    let mut rest = data;
    while let Ok(Some((msg, used))) = decode_frame(rest, MAX_FRAME) {
        assert!(used >= 4 && used <= rest.len() && used <= MAX_FRAME as usize + 4);
        if let rtc::fuzzing::Message::Bitfield(bits) = msg {
            let _ = Bitfield::from_wire(bits, (bits.len() * 8) as u32);
        }
        rest = &rest[used..];
    }
});
