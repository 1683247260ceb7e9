//! Characters in names and messages from a peer that change how the text around them shows:
//! the one definition the daemon's logs and the client's display and name checks use.

/// The Unicode bidirectional embeddings, overrides and isolates (U+202A-U+202E,
/// U+2066-U+2069) and the direction marks (U+200E, U+200F, U+061C): not control characters to
/// Rust, but they make a name read as another (`invoice<U+202E>fdp.exe` shows as
/// `invoiceexe.pdf`). No file name needs them.
pub fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

/// Whether `c`, shown as it is, could make text read as something it is not: a control
/// character (newlines, ANSI escapes, the C1 CSI), a bidirectional control, a zero-width or
/// invisible character, a line or paragraph separator, or the byte-order mark. What shows text
/// from a peer to a person escapes these.
pub fn hides_text(c: char) -> bool {
    c.is_control()
        || is_bidi_control(c)
        || matches!(c, '\u{200B}'..='\u{200D}' | '\u{2028}' | '\u{2029}' | '\u{2060}'..='\u{2065}' | '\u{FEFF}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_hides_text_and_what_does_not() {
        for c in [
            '\n', '\u{1b}', '\u{9b}', '\u{202e}', '\u{2066}', '\u{200b}', '\u{feff}',
        ] {
            assert!(hides_text(c), "{c:?}");
        }
        for c in ['a', 'é', '中', ' ', '\u{301}'] {
            assert!(!hides_text(c), "{c:?}");
        }
        assert!(is_bidi_control('\u{202e}') && !is_bidi_control('\u{200b}'));
    }
}
