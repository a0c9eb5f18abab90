//! Safe, bounded previews of keys, values and headers for a terminal: text stays
//! readable, anything that could garble or steer a terminal is escaped, and bytes that are
//! not UTF-8 are shown as `\xNN`, never written raw.

/// An escaped, possibly shortened rendering of some bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preview {
    pub text: String,
    /// Whether `text` stops before the end of the input (it then ends with `…`).
    pub truncated: bool,
}

/// Escapes `bytes` and keeps at most `max_chars` characters of the result.
pub fn preview(bytes: &[u8], max_chars: usize) -> Preview {
    let mut text = String::new();
    let mut chars = 0;
    let mut push = |piece: &str| -> bool {
        let n = piece.chars().count();
        if chars + n > max_chars {
            return false;
        }
        text.push_str(piece);
        chars += n;
        true
    };
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if !push(&escape_char(c)) {
                return Preview {
                    text: truncate_marker(text),
                    truncated: true,
                };
            }
        }
        for b in chunk.invalid() {
            if !push(&format!("\\x{b:02x}")) {
                return Preview {
                    text: truncate_marker(text),
                    truncated: true,
                };
            }
        }
    }
    Preview {
        text,
        truncated: false,
    }
}

fn truncate_marker(mut text: String) -> String {
    text.push('…');
    text
}

/// A character as it may be printed: itself, or an escape.
fn escape_char(c: char) -> String {
    match c {
        '\\' => "\\\\".into(),
        '\n' => "\\n".into(),
        '\r' => "\\r".into(),
        '\t' => "\\t".into(),
        '\0' => "\\0".into(),
        c if c.is_control() || is_invisible_format(c) => format!("\\u{{{:x}}}", c as u32),
        c => c.to_string(),
    }
}

/// Zero-width and bidirectional-override characters: printable by Unicode's rules, but
/// they hide or reorder what the operator sees.
fn is_invisible_format(c: char) -> bool {
    matches!(c as u32, 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2069 | 0xFEFF)
}

/// `text` with a marker when it was cut short; for one-line displays.
pub fn display(bytes: &[u8], max_chars: usize) -> String {
    preview(bytes, max_chars).text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_stays_readable() {
        let p = preview(r#"{"v":1,"id":"é-1"}"#.as_bytes(), 100);
        assert_eq!(p.text, r#"{"v":1,"id":"é-1"}"#);
        assert!(!p.truncated);
    }

    #[test]
    fn binary_and_control_bytes_are_escaped() {
        assert_eq!(display(b"\xff\xfe\x00", 100), "\\xff\\xfe\\0");
        assert_eq!(display(b"a\nb\tc\x1b[31m", 100), "a\\nb\\tc\\u{1b}[31m");
        assert_eq!(display(b"back\\slash", 100), "back\\\\slash");
        assert_eq!(
            display("rtl\u{202e}override".as_bytes(), 100),
            "rtl\\u{202e}override"
        );
        assert_eq!(display(b"ok \xc3\x28 bad", 100), "ok \\xc3( bad");
    }

    #[test]
    fn long_input_is_cut_on_whole_escapes() {
        let p = preview(b"abcdef", 4);
        assert_eq!(p.text, "abcd…");
        assert!(p.truncated);
        // An escape is never split: "\xff" needs 4 characters.
        let p = preview(b"ab\xff", 5);
        assert_eq!(p.text, "ab…");
        assert!(p.truncated);
        assert_eq!(
            preview(b"", 0),
            Preview {
                text: String::new(),
                truncated: false
            }
        );
        assert_eq!(preview("ééé".as_bytes(), 2).text, "éé…");
    }
}
