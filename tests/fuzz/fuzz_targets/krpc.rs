//! KRPC datagrams (the DHT's queries, responses and errors) are decoded
//! without panics, within their bounds, and what decodes re-encodes to
//! the same message.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    rtc::fuzzing::krpc(data);
});
