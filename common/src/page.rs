//! Cursor pagination: `?limit=` (default 50, max 200) and an opaque
//! `?cursor=`; lists answer `{"items":[…],"next_cursor":"…"|null}`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use axum::http::StatusCode;

use crate::error::HttpError;

pub const PAGE_LIMIT_DEFAULT: u32 = 50;
pub const PAGE_LIMIT_MAX: u32 = 200;
const CURSOR_BYTES_MAX: usize = 512;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// How many items, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// `next_cursor` from the previous page.
    #[param(pattern = "^[A-Za-z0-9_-]{1,512}$")]
    pub cursor: Option<String>,
}

/// A validated page request: the limit, and the decoded position after which
/// the page starts (the service's own sort key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: u32,
    pub after: Option<String>,
}

impl PageQuery {
    pub fn parse(&self) -> Result<PageRequest, HttpError> {
        let limit = self.limit.unwrap_or(PAGE_LIMIT_DEFAULT);
        if !(1..=PAGE_LIMIT_MAX).contains(&limit) {
            return Err(HttpError::invalid_request(format!("limit must be between 1 and {PAGE_LIMIT_MAX}")));
        }
        let after = match &self.cursor {
            None => None,
            Some(cursor) if !well_formed_cursor(cursor) => {
                return Err(HttpError::invalid_request(format!(
                    "cursor must be 1 to {CURSOR_BYTES_MAX} characters of A-Z, a-z, 0-9, _ and -"
                )));
            }
            Some(cursor) => Some(decode_cursor(cursor).ok_or_else(not_ours)?),
        };
        Ok(PageRequest { limit, after })
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from up to `limit + 1` rows fetched in order: the extra
    /// row only says that there is more, and `key` names the position of the
    /// last row shown.
    pub fn from_rows(mut rows: Vec<T>, limit: u32, key: impl Fn(&T) -> String) -> Self {
        let limit = limit as usize;
        let next_cursor = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|last| encode_cursor(&key(last)))
        } else {
            None
        };
        Page { items: rows, next_cursor }
    }

    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page { items: self.items.into_iter().map(f).collect(), next_cursor: self.next_cursor }
    }
}

pub fn encode_cursor(position: &str) -> String {
    URL_SAFE_NO_PAD.encode(position.as_bytes())
}

/// A well-formed cursor that this server did not hand out (or whose
/// position the service cannot read): 422 `invalid_cursor`.
pub fn not_ours() -> HttpError {
    HttpError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_cursor",
        "cursor is not one this server handed out; start again without it",
    )
}

/// What the documented pattern admits: `^[A-Za-z0-9_-]{1,512}$`.
fn well_formed_cursor(cursor: &str) -> bool {
    (1..=CURSOR_BYTES_MAX).contains(&cursor.len())
        && cursor.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn decode_cursor(cursor: &str) -> Option<String> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    // A position is text the service wrote: no control characters (a NUL
    // cannot even be stored in PostgreSQL text).
    String::from_utf8(bytes).ok().filter(|position| !position.chars().any(char::is_control))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_cursors() {
        assert_eq!(PageQuery::default().parse().unwrap(), PageRequest { limit: 50, after: None });
        for bad in [0, 201] {
            assert!(PageQuery { limit: Some(bad), cursor: None }.parse().is_err());
        }
        let refused = |cursor: &str| PageQuery { limit: None, cursor: Some(cursor.into()) }.parse().unwrap_err();
        assert_eq!(refused("!!").status, StatusCode::BAD_REQUEST, "outside the documented pattern");
        assert_eq!(refused(&"a".repeat(513)).status, StatusCode::BAD_REQUEST);
        // Well formed, but not base64 of text: not ours.
        let not_ours = refused("a");
        assert_eq!((not_ours.status, not_ours.code), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_cursor"));
        let page = Page::from_rows(vec![1, 2, 3], 2, |n| n.to_string());
        assert_eq!(page.items, vec![1, 2]);
        let next = PageQuery { limit: Some(2), cursor: page.next_cursor }.parse().unwrap();
        assert_eq!(next.after.as_deref(), Some("2"));
        assert!(Page::from_rows(vec![1, 2], 2, |n| n.to_string()).next_cursor.is_none());
    }
}
