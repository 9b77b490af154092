//! Free text from clients (names, notes, references, reasons): one rule.

/// `value` trimmed, if it is 1 to `chars_max` characters with no control
/// characters (no newlines, NULs or escapes to smuggle into logs and exports).
pub fn printable(value: &str, chars_max: usize) -> Option<String> {
    let value = value.trim();
    let fits = !value.is_empty() && value.chars().count() <= chars_max && !value.chars().any(char::is_control);
    fits.then(|| value.to_owned())
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lower_case_two_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xab]), "000fab");
    }

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
