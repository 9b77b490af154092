//! Ids shared between services. An account id is the accounts service's
//! (a UUID in text); a device id names one signed-in device session. Both
//! are cheap to clone, since signaling copies them into every event and
//! index.

use std::sync::Arc;

/// A user's account, as tokens name it (`sub`).
pub type AccountId = Arc<str>;
/// One signed-in device of an account, as tokens name it (`did`).
pub type DeviceId = Arc<str>;

/// The documented form of every id the services hand out: a UUID in lower
/// case, as `uuid::Uuid::to_string` writes it.
pub const UUID_PATTERN: &str = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$";

/// Whether `value` is of [`UUID_PATTERN`]'s form.
pub fn is_uuid(value: &str) -> bool {
    value.len() == 36
        && value.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        })
}

/// A UUID id in the path. Any other text names nothing: 404 `not_found`,
/// answered before anything is looked up (a NUL or a stray byte never
/// reaches the database).
pub struct IdPath(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for IdPath {
    type Rejection = crate::HttpError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        let no_such = || crate::HttpError::not_found("no such id");
        let axum::extract::Path(id) =
            axum::extract::Path::<String>::from_request_parts(parts, state).await.map_err(|_| no_such())?;
        if is_uuid(&id) { Ok(IdPath(id)) } else { Err(no_such()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_lower_case_and_hyphenated() {
        assert!(is_uuid("0193b2f0-1c2d-7e3f-8a9b-0c1d2e3f4a5b"));
        for bad in [
            "",
            "01900000-0000-7000-8000-00000000000",
            "01900000-0000-7000-8000-0000000000000",
            "01900000X0000-7000-8000-000000000000",
            "0190000A-0000-7000-8000-000000000000",
            "01900000-0000-7000-8000-00000000000\u{0}",
        ] {
            assert!(!is_uuid(bad), "{bad:?}");
        }
    }
}
