//! Bencode decoding never panics, and whatever decodes re-encodes to bytes
//! that decode to the same value.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rtc::fuzzing::{decode, encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = decode(data) {
        let again = encode(&v);
        let back = decode(&again).expect("canonical output decodes");
        assert_eq!(encode(&back), again);
    }
});
