//! `PhoneNumber`: an E.164 mobile number and the region it belongs to.

use std::fmt;

use phonenumber::{Mode, Type};

/// Longest input we even try to parse; E.164 itself is at most 15 digits.
const PHONE_INPUT_CHARS_MAX: usize = 32;
/// What the API documents as a phone number's form ([`PhoneError::is_malformed`]
/// is exactly its negation); within it, a number can still be refused for
/// what it is (422).
pub const PHONE_PATTERN: &str = r"^\+[0-9 ().-]{1,31}$";

/// A valid mobile (or mobile-capable) number in E.164 form, with the ISO
/// 3166-1 alpha-2 region derived from it. The only way to get one is
/// [`PhoneNumber::parse`].
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PhoneNumber {
    e164: String,
    region: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    #[error("a phone number must start with + and the country code, e.g. +79161234567")]
    NotInternational,
    #[error("a phone number is + and up to 31 digits, spaces, dots, dashes and parentheses")]
    Malformed,
    #[error("that is not a phone number")]
    Unparseable,
    #[error("that phone number does not exist in its country's numbering plan")]
    Invalid,
    #[error("that number is not a mobile number; sign-in codes go by SMS")]
    NotMobile,
}

impl PhoneError {
    /// Outside [`PHONE_PATTERN`]: a 400; the others are 422.
    pub fn is_malformed(&self) -> bool {
        matches!(self, PhoneError::NotInternational | PhoneError::Malformed)
    }
}

impl PhoneNumber {
    /// Parses user input such as `+7 916 123-45-67` or `+79161234567`.
    pub fn parse(input: &str) -> Result<Self, PhoneError> {
        let Some(rest) = input.strip_prefix('+') else {
            return Err(PhoneError::NotInternational);
        };
        if rest.is_empty()
            || input.len() > PHONE_INPUT_CHARS_MAX
            || !rest.bytes().all(|b| b.is_ascii_digit() || matches!(b, b' ' | b'-' | b'(' | b')' | b'.'))
        {
            return Err(PhoneError::Malformed);
        }
        let number = phonenumber::parse(None, input).map_err(|_| PhoneError::Unparseable)?;
        if number.extension().is_some() {
            return Err(PhoneError::Unparseable);
        }
        if !number.is_valid() {
            return Err(PhoneError::Invalid);
        }
        match number.number_type(&phonenumber::metadata::DATABASE) {
            Type::Mobile | Type::FixedLineOrMobile => {}
            _ => return Err(PhoneError::NotMobile),
        }
        let region = number.country().id().ok_or(PhoneError::Invalid)?.as_ref().to_owned();
        let e164 = number.format().mode(Mode::E164).to_string();
        Ok(PhoneNumber { e164, region })
    }

    /// Rebuilds a number read back from our own storage (already normalised).
    pub fn from_stored(e164: String, region: String) -> Self {
        PhoneNumber { e164, region }
    }

    pub fn as_e164(&self) -> &str {
        &self.e164
    }

    /// ISO 3166-1 alpha-2, e.g. `RU`.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// For logs: the country code and last two digits only (`+7*********67`).
    pub fn masked(&self) -> String {
        mask(&self.e164)
    }
}

/// Masks all but a number's first two and last two characters.
pub fn mask(e164: &str) -> String {
    let chars: Vec<char> = e164.chars().collect();
    if chars.len() <= 4 {
        return "*".repeat(chars.len());
    }
    let mut masked = String::with_capacity(chars.len());
    masked.extend(&chars[..2]);
    masked.extend(std::iter::repeat_n('*', chars.len() - 4));
    masked.extend(&chars[chars.len() - 2..]);
    masked
}

/// Debug never shows the full number, so it cannot reach a log by accident.
impl fmt::Debug for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhoneNumber({}, {})", self.masked(), self.region)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_to_e164_and_derives_the_region() {
        let a = PhoneNumber::parse("+7 916 123-45-67").unwrap();
        let b = PhoneNumber::parse("+79161234567").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.as_e164(), "+79161234567");
        assert_eq!(a.region(), "RU");
        let br = PhoneNumber::parse("+55 11 91234-5678").unwrap();
        assert_eq!(br.as_e164(), "+5511912345678");
        assert_eq!(br.region(), "BR");
        assert_eq!(PhoneNumber::parse("+4915123456789").unwrap().region(), "DE");
    }

    #[test]
    fn rejects_each_kind_of_bad_number() {
        assert_eq!(PhoneNumber::parse("89161234567"), Err(PhoneError::NotInternational));
        assert_eq!(PhoneNumber::parse(""), Err(PhoneError::NotInternational));
        assert_eq!(PhoneNumber::parse(" +79161234567"), Err(PhoneError::NotInternational), "no trimming");
        assert_eq!(PhoneNumber::parse("+"), Err(PhoneError::Malformed));
        assert_eq!(PhoneNumber::parse("+7abc"), Err(PhoneError::Malformed));
        assert_eq!(PhoneNumber::parse("+7+916"), Err(PhoneError::Malformed));
        assert_eq!(PhoneNumber::parse(&format!("+7{}", "1".repeat(40))), Err(PhoneError::Malformed));
        // Of the documented form, but no number at all.
        assert_eq!(PhoneNumber::parse("+()"), Err(PhoneError::Unparseable));
        for malformed in ["", "+", "+7abc", "89161234567"] {
            assert!(PhoneNumber::parse(malformed).unwrap_err().is_malformed(), "{malformed:?}");
        }
        for refused in ["+()", "+7916123", "+74951234567"] {
            assert!(!PhoneNumber::parse(refused).unwrap_err().is_malformed(), "{refused:?}");
        }
        assert_eq!(PhoneNumber::parse("+7916123"), Err(PhoneError::Invalid));
        // A Moscow landline cannot receive an SMS.
        assert_eq!(PhoneNumber::parse("+74951234567"), Err(PhoneError::NotMobile));
    }

    #[test]
    fn masks_in_debug_and_logs() {
        let number = PhoneNumber::parse("+79161234567").unwrap();
        assert_eq!(number.masked(), "+7********67");
        assert!(!format!("{number:?}").contains("9161234567"));
    }
}
