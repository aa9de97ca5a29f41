//! The `rtc` binary: everything is in the library's `cli` module, so the
//! library's internals stay private to the crate.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    rtc::cli::main()
}
