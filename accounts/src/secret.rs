//! Random secrets (sign-in codes, refresh tokens, API keys) and how they are
//! kept at rest: only a SHA-256 digest is stored, and digests are compared in
//! constant time.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub const SIGN_IN_CODE_DIGITS: usize = 6;
const TOKEN_RANDOM_BYTES: usize = 32;

/// A six-digit sign-in code. Debug hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct SignInCode(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a sign-in code is exactly 6 digits")]
pub struct SignInCodeError;

impl SignInCode {
    pub fn parse(input: &str) -> Result<Self, SignInCodeError> {
        if input.len() == SIGN_IN_CODE_DIGITS && input.bytes().all(|b| b.is_ascii_digit()) {
            Ok(SignInCode(input.to_owned()))
        } else {
            Err(SignInCodeError)
        }
    }

    /// A fresh code, uniform over 000000–999999, from the OS-seeded CSPRNG.
    pub fn generate() -> Self {
        let value: u32 = rand::rng().random_range(0..1_000_000);
        SignInCode(format!("{value:06}"))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The digest stored for this code. Salted with the code's row id so that
    /// equal codes for different requests have different digests.
    pub fn digest(&self, salt: &str) -> String {
        digest_hex(&[salt.as_bytes(), b":", self.0.as_bytes()])
    }
}

impl fmt::Debug for SignInCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SignInCode(******)")
    }
}

/// A high-entropy bearer secret: `<prefix>_<43 chars of base64url>`.
pub fn new_token(prefix: &str) -> String {
    let mut bytes = [0u8; TOKEN_RANDOM_BYTES];
    rand::rng().fill(&mut bytes);
    format!("{prefix}_{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// SHA-256 of a high-entropy token, hex; what the database keeps.
pub fn token_digest(token: &str) -> String {
    digest_hex(&[token.as_bytes()])
}

fn digest_hex(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    format!("{:x}", hasher.finalize())
}

/// Constant-time equality for digests and secrets.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_in_code_parsing() {
        assert!(SignInCode::parse("012345").is_ok());
        for bad in ["", "12345", "1234567", "12345a", "١٢٣٤٥٦", "12 345"] {
            assert_eq!(SignInCode::parse(bad), Err(SignInCodeError), "{bad:?}");
        }
        assert_eq!(format!("{:?}", SignInCode::parse("123456").unwrap()), "SignInCode(******)");
    }

    #[test]
    fn generated_codes_are_six_digits_and_vary() {
        let codes: std::collections::HashSet<String> =
            (0..64).map(|_| SignInCode::generate().expose().to_owned()).collect();
        assert!(codes.iter().all(|c| SignInCode::parse(c).is_ok()));
        assert!(codes.len() > 60);
    }

    #[test]
    fn digests_are_salted_and_compared_in_constant_time() {
        let code = SignInCode::parse("123456").unwrap();
        assert_ne!(code.digest("a"), code.digest("b"));
        assert!(constant_time_eq(&code.digest("a"), &code.digest("a")));
        assert!(!constant_time_eq("ab", "abc"));
        let token = new_token("rt");
        assert!(token.starts_with("rt_") && token.len() == 3 + 43);
        assert_eq!(token_digest(&token).len(), 64);
    }
}
