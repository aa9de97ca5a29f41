//! Metainfo validation never panics, and an accepted torrent only names
//! relative paths without `..` and has consistent sizes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rtc::Torrent;
use std::path::Component;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = Torrent::from_bytes(data) {
        let mut total = 0u64;
        for f in t.files() {
            assert!(f.path().components().all(|c| matches!(c, Component::Normal(_))));
            total += f.length();
        }
        assert_eq!(total, t.total_length());
        assert_eq!(t.piece_count(), t.layout().piece_count());
    }
});
