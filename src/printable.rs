//! Text from outside prepull made fit to print: a registry's error message, a token realm's or a
//! plugin's words, a platform an index names. Such text reaches the terminal, log lines and the
//! status file, so control characters in it (escape sequences that recolour or rewrite a
//! terminal, newlines that forge a log line, bidirectional overrides that reorder what is shown)
//! are written escaped, as `\n` or `\u{1b}`, and it is cut to a length a message can carry.

use std::borrow::Cow;
use std::fmt::Write as _;

/// The most characters of outside text one message carries.
pub const MAX_CHARS: usize = 1000;

/// `text` with every control character escaped and cut after [`MAX_CHARS`] characters (an
/// ellipsis says it was cut).
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_CHARS + 8));
    for (i, c) in text.chars().enumerate() {
        if i == MAX_CHARS {
            out.push('…');
            break;
        }
        push_escaped(&mut out, c);
    }
    out
}

/// `text` with every control character escaped, whatever its length; unchanged (and not copied)
/// when it has none.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        push_escaped(&mut out, c);
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn push_escaped(out: &mut String, c: char) {
    if !needs_escape(c) {
        out.push(c);
        return;
    }
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_plain_text_is_kept() {
        assert_eq!(
            printable("blob unknown\u{1b}[31m\nerror: forged\r\u{7}\t\u{202e}x"),
            "blob unknown\\u{1b}[31m\\nerror: forged\\r\\u{7}\\t\\u{202e}x"
        );
        assert_eq!(
            printable("manifest unknown: é ü 漢"),
            "manifest unknown: é ü 漢"
        );
        assert!(matches!(escape_controls("plain"), Cow::Borrowed("plain")));
        assert_eq!(escape_controls("a\u{9b}b"), "a\\u{9b}b");
    }

    #[test]
    fn long_text_is_cut() {
        let long = "x".repeat(5000);
        let shown = printable(&long);
        assert_eq!(shown.chars().count(), MAX_CHARS + 1);
        assert!(shown.ends_with('…'));
    }
}
