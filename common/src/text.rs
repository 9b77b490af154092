//! Free text from clients (names, notes, references, reasons): one rule.

/// The documented schema of free text, beside `maxLength`: no control
/// characters (Unicode category Cc). `minLength` is 1.
pub const PRINTABLE_PATTERN: &str = r"^[^\x00-\x1f\x7f-\x9f]*$";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextError {
    /// Empty, longer than allowed, or with a control character: outside the
    /// documented schema (400).
    Malformed,
    /// Within the schema but only whitespace (422).
    Blank,
}

impl TextError {
    /// What a client is told about `field` (of at most `chars_max` characters).
    pub fn describe(self, field: &str, chars_max: usize) -> String {
        match self {
            TextError::Malformed => format!("{field} must be 1 to {chars_max} characters with no control characters"),
            TextError::Blank => format!("{field} must not be only whitespace"),
        }
    }
}

/// `value` trimmed, if it is 1 to `chars_max` characters (counted before
/// trimming, as the schema's `maxLength` counts) with no control characters
/// (no newlines, NULs or escapes to smuggle into logs and exports) and not
/// only whitespace.
pub fn printable(value: &str, chars_max: usize) -> Result<String, TextError> {
    let length = value.chars().count();
    if length == 0 || length > chars_max || value.chars().any(char::is_control) {
        return Err(TextError::Malformed);
    }
    let value = value.trim();
    if value.is_empty() {
        return Err(TextError::Blank);
    }
    Ok(value.to_owned())
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
        assert_eq!(printable("  Pixel 9 ", 64).as_deref(), Ok("Pixel 9"));
        for bad in ["", "a\nb", "a\u{0}b", "a\u{1b}[31m", "a\u{85}b"] {
            assert_eq!(printable(bad, 64), Err(TextError::Malformed), "{bad:?}");
        }
        assert_eq!(printable("   ", 64), Err(TextError::Blank));
        assert_eq!(printable(&"é".repeat(4), 4).as_deref(), Ok("éééé"), "counted in characters, not bytes");
        assert_eq!(printable(&"x".repeat(5), 4), Err(TextError::Malformed));
        assert_eq!(printable(" xxxx", 4), Err(TextError::Malformed), "counted before trimming, as maxLength is");
    }
}
