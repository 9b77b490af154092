//! TURN REST API credentials (draft-uberti-behave-turn-rest), the scheme
//! coturn checks with `use-auth-secret`: the username is
//! `<expiry unix time>:<account_id>` and the password is
//! base64(HMAC-SHA1(secret, username)). Nobody stores them: whoever holds the
//! secret recomputes the password from the username.

use std::fmt;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;

/// Shared secrets. The first one signs new credentials; every one is
/// accepted, so a secret can be rotated without cutting calls short.
#[derive(Clone)]
pub struct TurnSecrets(Arc<[String]>);

impl fmt::Debug for TurnSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TurnSecrets([{} redacted])", self.0.len())
    }
}

/// Credentials live a day by default: TURN checks them again at every
/// Refresh, so they must outlast the longest call.
pub const TURN_CREDENTIAL_TTL_S_DEFAULT: u64 = 24 * 3_600;

/// The shortest secret accepted: a guessable secret makes every relay open.
pub const SECRET_CHARS_MIN: usize = 16;

impl TurnSecrets {
    pub fn new(secrets: Vec<String>) -> Result<Self, String> {
        if secrets.is_empty() {
            return Err("at least one TURN secret is needed".into());
        }
        if secrets
            .iter()
            .any(|secret| secret.chars().count() < SECRET_CHARS_MIN || secret.contains(char::is_whitespace))
        {
            return Err(format!("each TURN secret needs at least {SECRET_CHARS_MIN} characters and no spaces"));
        }
        Ok(TurnSecrets(secrets.into()))
    }

    /// Credentials for `account_id`, valid until `expires_at_s` (unix time).
    pub fn issue(&self, account_id: &str, expires_at_s: u64) -> Credentials {
        let username = format!("{expires_at_s}:{account_id}");
        let credential = password(&self.0[0], &username);
        Credentials { username, credential }
    }

    /// The passwords `username` would have under each accepted secret.
    pub fn passwords<'a>(&'a self, username: &'a str) -> impl Iterator<Item = String> + 'a {
        self.0.iter().map(move |secret| password(secret, username))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub credential: String,
}

/// base64(HMAC-SHA1(secret, username)).
pub fn password(secret: &str, username: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(username.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// The long-term credential key of RFC 5389 §15.4: MD5(username:realm:password).
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut md5 = Md5::new();
    md5.update(username.as_bytes());
    md5.update(b":");
    md5.update(realm.as_bytes());
    md5.update(b":");
    md5.update(password.as_bytes());
    md5.finalize().into()
}

/// A username's parts: `(expiry unix time, account id)`.
pub fn parse_username(username: &str) -> Option<(u64, &str)> {
    let (expiry, account) = username.split_once(':')?;
    if expiry.is_empty() || !expiry.bytes().all(|b| b.is_ascii_digit()) || account.is_empty() {
        return None;
    }
    Some((expiry.parse().ok()?, account))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_base64_hmac_sha1_of_the_username() {
        // Computed independently: printf '1700000000:alice' | openssl dgst -sha1 -hmac 'north-secret-0123' -binary | base64
        assert_eq!(password("north-secret-0123", "1700000000:alice"), "ersLiktDsjTp8bqVNrsKIAlktas=");
        let secrets = TurnSecrets::new(vec!["north-secret-0123".into(), "south-secret-4567".into()]).unwrap();
        let issued = secrets.issue("alice", 1_700_000_000);
        assert_eq!(issued.username, "1700000000:alice");
        assert_eq!(issued.credential, "ersLiktDsjTp8bqVNrsKIAlktas=");
        let all: Vec<String> = secrets.passwords("1700000000:alice").collect();
        assert_eq!(all[0], issued.credential);
        assert_eq!(all[1], password("south-secret-4567", "1700000000:alice"));
    }

    #[test]
    fn usernames_are_expiry_then_account() {
        assert_eq!(parse_username("1700000000:0190-abc"), Some((1_700_000_000, "0190-abc")));
        assert_eq!(parse_username("1700000000:a:b"), Some((1_700_000_000, "a:b")));
        for bad in ["", "1700000000", ":alice", "1700000000:", "-5:alice", "17e8:alice", "99999999999999999999:a"] {
            assert_eq!(parse_username(bad), None, "{bad}");
        }
    }

    #[test]
    fn weak_secrets_are_refused() {
        assert!(TurnSecrets::new(vec![]).is_err());
        assert!(TurnSecrets::new(vec!["short".into()]).is_err());
        assert!(TurnSecrets::new(vec!["a secret with spaces".into()]).is_err());
        assert!(format!("{:?}", TurnSecrets::new(vec!["north-secret-0123".into()]).unwrap()).contains("redacted"));
    }

    #[test]
    fn the_long_term_key_is_md5_of_user_realm_password() {
        // Computed independently: printf 'user:realm:pass' | md5sum
        assert_eq!(
            long_term_key("user", "realm", "pass").iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "8493fbc53ba582fb4c044c456bdc40eb"
        );
    }
}
