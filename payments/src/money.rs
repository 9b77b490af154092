//! Money: an amount in integer minor units of an ISO 4217 currency. Decimal
//! strings on the wire ("150.00"), never floats, never JSON numbers.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The largest amount accepted anywhere, in major units: far above any limit,
/// far below where i64 minor units could overflow in a sum.
pub const AMOUNT_MAJOR_MAX: i64 = 1_000_000_000_000;
const AMOUNT_INPUT_CHARS_MAX: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
pub enum Currency {
    #[serde(rename = "RUB")]
    Rub,
    #[serde(rename = "BRL")]
    Brl,
}

impl Currency {
    pub fn parse(code: &str) -> Option<Self> {
        match code {
            "RUB" => Some(Currency::Rub),
            "BRL" => Some(Currency::Brl),
            _ => None,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Currency::Rub => "RUB",
            Currency::Brl => "BRL",
        }
    }

    /// Digits after the decimal point (ISO 4217 minor unit).
    pub fn minor_digits(self) -> u32 {
        2
    }

    fn minor_per_major(self) -> i64 {
        10_i64.pow(self.minor_digits())
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("an amount is a decimal string such as \"150.00\"")]
    Malformed,
    #[error("{currency} has {digits} decimal places; \"{input}\" has more")]
    TooPrecise { currency: Currency, digits: u32, input: String },
    #[error("the amount must be greater than zero")]
    NotPositive,
    /// A sign where none is allowed: outside the documented form.
    #[error("the amount must be greater than zero, without a sign")]
    Negative,
    #[error("the amount is over the maximum of {AMOUNT_MAJOR_MAX}")]
    TooLarge,
}

impl AmountError {
    /// Outside the documented form (`^(0|[1-9][0-9]*)(\.[0-9]+)?$`, at most
    /// 32 characters): a 400; the others are 422.
    pub fn is_malformed(&self) -> bool {
        matches!(self, AmountError::Malformed | AmountError::Negative)
    }
}

/// A positive amount of one currency, in minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Money {
    minor: i64,
    currency: Currency,
}

impl Money {
    /// Parses a positive decimal string: digits, at most one point, at most
    /// the currency's decimal places; no sign, exponent, spaces or separators.
    pub fn parse(input: &str, currency: Currency) -> Result<Self, AmountError> {
        let minor = parse_minor(input, currency, false)?;
        if minor == 0 {
            return Err(AmountError::NotPositive);
        }
        Ok(Money { minor, currency })
    }

    pub fn from_minor(minor: i64, currency: Currency) -> Self {
        Money { minor, currency }
    }

    pub fn minor(self) -> i64 {
        self.minor
    }

    pub fn currency(self) -> Currency {
        self.currency
    }
}

/// Parses a decimal string into minor units; with `signed`, a leading `-` is
/// allowed (adjustments).
pub fn parse_minor(input: &str, currency: Currency, signed: bool) -> Result<i64, AmountError> {
    if input.is_empty() || input.len() > AMOUNT_INPUT_CHARS_MAX {
        return Err(AmountError::Malformed);
    }
    let (negative, digits) = match input.strip_prefix('-') {
        Some(rest) if signed => (true, rest),
        Some(_) => return Err(AmountError::Negative),
        None => (false, input),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AmountError::Malformed);
    }
    if digits.contains('.') && fraction.is_empty() {
        return Err(AmountError::Malformed);
    }
    // One spelling per amount: no leading zeros ("01.00"), no negative zero.
    if (whole.len() > 1 && whole.starts_with('0'))
        || (negative && whole.bytes().chain(fraction.bytes()).all(|b| b == b'0'))
    {
        return Err(AmountError::Malformed);
    }
    let decimal = Decimal::from_str(digits).map_err(|_| AmountError::TooLarge)?;
    let digits_allowed = currency.minor_digits();
    if decimal.normalize().scale() > digits_allowed {
        return Err(AmountError::TooPrecise { currency, digits: digits_allowed, input: input.to_owned() });
    }
    if decimal > Decimal::from(AMOUNT_MAJOR_MAX) {
        return Err(AmountError::TooLarge);
    }
    let minor = decimal * Decimal::from(currency.minor_per_major());
    let minor = i64::try_from(minor.trunc()).map_err(|_| AmountError::TooLarge)?;
    Ok(if negative { -minor } else { minor })
}

/// Formats minor units with exactly the currency's decimal places: `15000` →
/// `"150.00"`, `-5` → `"-0.05"`.
pub fn format_minor(minor: i64, currency: Currency) -> String {
    let per_major = currency.minor_per_major().unsigned_abs();
    let magnitude = minor.unsigned_abs();
    let sign = if minor < 0 { "-" } else { "" };
    format!(
        "{sign}{}.{:0width$}",
        magnitude / per_major,
        magnitude % per_major,
        width = currency.minor_digits() as usize
    )
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_minor(self.minor, self.currency))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_decimal_strings_into_minor_units() {
        assert_eq!(Money::parse("150.00", Currency::Rub).unwrap().minor(), 15_000);
        assert_eq!(Money::parse("150", Currency::Rub).unwrap().minor(), 15_000);
        assert_eq!(Money::parse("0.01", Currency::Brl).unwrap().minor(), 1);
        assert_eq!(Money::parse("150.5", Currency::Rub).unwrap().minor(), 15_050);
        assert_eq!(Money::parse("1000000000000", Currency::Rub).unwrap().minor(), 100_000_000_000_000);
        assert_eq!(parse_minor("-12.30", Currency::Rub, true).unwrap(), -1_230);
    }

    #[test]
    fn rejects_each_kind_of_bad_amount() {
        for bad in [
            "", "abc", "1e3", "1E3", "+5", " 5", "5 ", "1,00", "1.", ".5", "1.2.3", "0x10", "٣", "NaN", "inf", "01.00",
            "00.0", "007",
        ] {
            assert_eq!(Money::parse(bad, Currency::Rub), Err(AmountError::Malformed), "{bad:?}");
        }
        assert!(matches!(Money::parse("1.001", Currency::Rub), Err(AmountError::TooPrecise { .. })));
        for zero in ["0", "0.00", "0.0"] {
            assert_eq!(Money::parse(zero, Currency::Rub), Err(AmountError::NotPositive), "{zero}");
        }
        assert_eq!(Money::parse("-1.00", Currency::Rub), Err(AmountError::Negative));
        for negative_zero in ["-0", "-0.00", "-00.5"] {
            assert_eq!(parse_minor(negative_zero, Currency::Rub, true), Err(AmountError::Malformed), "{negative_zero}");
        }
        assert_eq!(Money::parse("1000000000000.01", Currency::Rub), Err(AmountError::TooLarge));
        assert_eq!(Money::parse(&"9".repeat(31), Currency::Rub), Err(AmountError::TooLarge));
        assert_eq!(Money::parse(&"9".repeat(40), Currency::Rub), Err(AmountError::Malformed));
    }

    #[test]
    fn formats_with_the_currency_digits() {
        assert_eq!(format_minor(15_000, Currency::Rub), "150.00");
        assert_eq!(format_minor(5, Currency::Brl), "0.05");
        assert_eq!(format_minor(-5, Currency::Brl), "-0.05");
        assert_eq!(format_minor(0, Currency::Brl), "0.00");
        assert_eq!(Money::parse("150.10", Currency::Rub).unwrap().to_string(), "150.10");
    }
}

/// Fuzz target of amounts as clients write them (`courier_common::fuzz`).
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    fn config() -> ProptestConfig {
        ProptestConfig { cases: courier_common::fuzz::cases(), ..ProptestConfig::default() }
    }

    fn currency() -> impl Strategy<Value = Currency> {
        prop_oneof![Just(Currency::Rub), Just(Currency::Brl)]
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn an_amount_is_read_or_refused_and_what_is_read_formats_back_to_itself(
            input in prop_oneof!["-?[0-9]{0,22}(\\.[0-9]{0,4})?", "[-+0-9.eE ,_]{0,30}", ".{0,40}"],
            currency in currency(),
            signed in any::<bool>(),
        ) {
            if let Ok(minor) = parse_minor(&input, currency, signed) {
                prop_assert!(signed || minor >= 0);
                let formatted = format_minor(minor, currency);
                prop_assert_eq!(parse_minor(&formatted, currency, true), Ok(minor), "{} → {}", input, formatted);
            }
        }

        #[test]
        fn every_amount_in_range_reads_back_from_its_formatting(minor in -AMOUNT_MAJOR_MAX * 100..=AMOUNT_MAJOR_MAX * 100, currency in currency()) {
            prop_assert_eq!(parse_minor(&format_minor(minor, currency), currency, true), Ok(minor));
        }
    }
}
