//! Fuzz targets of what accounts reads from outside (`courier_common::fuzz`):
//! phone numbers as people type them, and access tokens, forged or mangled.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::prelude::*;

use crate::phone::PhoneNumber;
use crate::tokens::{TokenIssuer, TokenKey, TokenVerifier};

fn config() -> ProptestConfig {
    ProptestConfig { cases: courier_common::fuzz::cases(), ..ProptestConfig::default() }
}

fn now_s() -> u64 {
    courier_common::time::now_s()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_phone_number_is_read_or_refused_and_what_is_read_reads_back_the_same(
        input in prop_oneof![
            "\\+[0-9 ()\\-.]{0,24}",
            "\\+(7|55|1|44|49)[0-9]{6,12}",
            ".{0,40}",
        ],
    ) {
        if let Ok(number) = PhoneNumber::parse(&input) {
            let again = PhoneNumber::parse(number.as_e164()).expect("a number's E.164 form parses");
            prop_assert_eq!(again.as_e164(), number.as_e164());
            prop_assert_eq!(again.region(), number.region());
        }
    }
}

/// One issuer and its verifier for every case (key generation is the slow part).
fn keys() -> &'static (TokenIssuer, TokenVerifier) {
    static KEYS: std::sync::OnceLock<(TokenIssuer, TokenVerifier)> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        let issuer = TokenIssuer::new(TokenKey::generate(), vec![], 900);
        let verifier = TokenVerifier::from_jwks(&issuer.jwks()).expect("our own JWKS");
        (issuer, verifier)
    })
}

/// A token's three parts with some bytes of one replaced, or a part swapped
/// for arbitrary JSON (an `alg: none` header, claims of another account).
fn mangled() -> impl Strategy<Value = String> {
    (
        0..3usize,
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        prop_oneof![
            Just(None),
            Just(Some(r#"{"alg":"none","typ":"JWT"}"#.to_owned())),
            Just(Some(r#"{"alg":"HS256","typ":"JWT","kid":"x"}"#.to_owned())),
            ".{0,60}".prop_map(Some),
        ],
    )
        .prop_map(|(part, edits, replacement)| {
            let token = keys().0.issue("acc", "dev", "RU", now_s());
            let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
            match replacement {
                Some(json) => parts[part] = URL_SAFE_NO_PAD.encode(json),
                None => {
                    let mut bytes = parts[part].clone().into_bytes();
                    for (at, byte) in edits {
                        let at = at.index(bytes.len());
                        bytes[at] = byte;
                    }
                    parts[part] = String::from_utf8_lossy(&bytes).into_owned();
                }
            }
            parts.join(".")
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_text_is_refused_as_a_token(text in prop_oneof![".{0,300}", "[A-Za-z0-9_\\-]{0,80}\\.[A-Za-z0-9_\\-]{0,200}\\.[A-Za-z0-9_\\-]{0,90}"]) {
        prop_assert!(keys().1.verify_with_known_keys(&text).is_err());
    }

    #[test]
    fn a_mangled_token_never_verifies_as_anything_but_the_original(token in mangled()) {
        if let Ok(claims) = keys().1.verify_signature(&token) {
            // Only a change the encoding ignores can leave the signature valid.
            prop_assert_eq!((claims.sub.as_str(), claims.did.as_str()), ("acc", "dev"));
        }
    }
}
