//! Tracker answers are parsed without panics, whatever the tracker sends.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = rtc::fuzzing::parse_response(data);
});
