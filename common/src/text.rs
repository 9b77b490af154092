//! Free text from clients (names, notes, references, reasons): one rule.

/// `value` trimmed, if it is 1 to `chars_max` characters with no control
/// characters (no newlines, NULs or escapes to smuggle into logs and exports).
pub fn printable(value: &str, chars_max: usize) -> Option<String> {
    let value = value.trim();
    let fits = !value.is_empty() && value.chars().count() <= chars_max && !value.chars().any(char::is_control);
    fits.then(|| value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_and_bounds_and_refuses_control_characters() {
        assert_eq!(printable("  Pixel 9 ", 64).as_deref(), Some("Pixel 9"));
        for bad in ["", "   ", "a\nb", "a\u{0}b", "a\u{1b}[31m"] {
            assert_eq!(printable(bad, 64), None, "{bad:?}");
        }
        assert_eq!(printable(&"é".repeat(4), 4).as_deref(), Some("éééé"), "counted in characters, not bytes");
        assert_eq!(printable(&"x".repeat(5), 4), None);
    }
}
