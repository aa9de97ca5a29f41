//! Extension payloads (BEP 10 handshake, BEP 9 metadata, BEP 11 PEX) are
//! decoded without panics, within their bounds, and what decodes
//! re-encodes to the same value.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    rtc::fuzzing::extension_payloads(data);
});
