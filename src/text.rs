//! Printing strings that came from outside (torrent names, paths,
//! comments, tracker URLs and messages, peer errors) so that they cannot
//! drive the terminal: control characters (C0, DEL, C1) and the Unicode
//! bidirectional overrides are shown escaped (`\n`, `\u{1b}`, ...), and
//! backslashes are doubled so an escape cannot be faked. Owns only
//! formatting; it never changes what is stored or compared.

use std::fmt;
use std::path::Path;

/// Displays `s` with control characters escaped.
pub struct Escaped<'a>(pub &'a str);

fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c == '\\' {
                f.write_str("\\\\")?;
            } else if needs_escape(c) {
                write!(f, "{}", c.escape_default())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

/// `s` escaped, as an owned string.
pub fn escaped(s: &str) -> String {
    Escaped(s).to_string()
}

/// A path escaped; bytes that are not UTF-8 are shown as `\xNN`, so two
/// different names never print the same.
pub fn escaped_path(p: &Path) -> String {
    use std::fmt::Write;
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for chunk in p.as_os_str().as_bytes().utf8_chunks() {
        out.push_str(&escaped(chunk.valid()));
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// Bytes from a peer or tracker, lossily decoded and escaped.
#[cfg(test)]
pub fn escaped_bytes(b: &[u8]) -> String {
    escaped(&String::from_utf8_lossy(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escaped("a\x1b[31mb\nc\td"), "a\\u{1b}[31mb\\nc\\td");
        assert_eq!(escaped("\u{7f}\u{9b}"), "\\u{7f}\\u{9b}");
        assert_eq!(escaped("x\u{202e}y"), "x\\u{202e}y");
    }

    #[test]
    fn ordinary_text_is_unchanged_and_backslashes_cannot_fake_escapes() {
        assert_eq!(escaped("Ubuntu 24.04 — ISO ü"), "Ubuntu 24.04 — ISO ü");
        assert_eq!(escaped("a\\nb"), "a\\\\nb");
        assert_eq!(escaped_bytes(b"ok\xff\x07"), "ok\u{fffd}\\u{7}");
    }

    #[test]
    fn paths_that_are_not_utf8_print_their_bytes() {
        use std::os::unix::ffi::OsStrExt;
        let p = Path::new(std::ffi::OsStr::from_bytes(b"a\xff\\b\n\xc3"));
        assert_eq!(escaped_path(p), "a\\xff\\\\b\\n\\xc3");
    }
}
