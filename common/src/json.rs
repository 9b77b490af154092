//! A JSON body extractor whose rejections use the service error shape.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::HttpError;

/// Like `axum::Json`, but a malformed body, a wrong type or an unknown field
/// (request types carry `#[serde(deny_unknown_fields)]`) is a 400
/// `invalid_request`, a body over the limit a 413 `payload_too_large`, and a
/// missing `Content-Type: application/json` a 415, all as
/// `{"error":{"code","message"}}`.
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = HttpError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .map(|value| value.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/json"))
            .unwrap_or(false);
        if !is_json {
            return Err(HttpError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(request, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                HttpError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "the request body is over the size limit",
                )
            } else {
                HttpError::invalid_request(format!("could not read the request body: {rejection}"))
            }
        })?;
        parse(&bytes).map(Json)
    }
}

/// Parses a JSON document into `T` with a message that names the problem.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, HttpError> {
    serde_json::from_slice(bytes).map_err(|error| HttpError::invalid_request(format!("invalid JSON body: {error}")))
}

/// A JSON Schema `integer`, which includes numbers such as `4.0`: for
/// request fields with `#[serde(deserialize_with = "courier_common::json::integer")]`.
pub fn integer<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    use serde::de::Error;
    let number = serde_json::Number::deserialize(deserializer)?;
    if let Some(value) = number.as_i64() {
        return Ok(value);
    }
    match number.as_f64() {
        Some(value) if value.fract() == 0.0 && value >= i64::MIN as f64 && value < i64::MAX as f64 => Ok(value as i64),
        _ => Err(D::Error::custom(format!("{number} is not an integer"))),
    }
}

/// [`integer`] for an optional field (missing or `null`: `None`), with
/// `#[serde(default, deserialize_with = "courier_common::json::optional_integer")]`.
pub fn optional_integer<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    match Option::<serde_json::Number>::deserialize(deserializer)? {
        None => Ok(None),
        Some(number) => integer(number).map(Some).map_err(serde::de::Error::custom),
    }
}

/// Like `axum::extract::Query`, with rejections in the service error shape.
pub struct Query<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|axum::extract::Query(value)| Query(value))
            .map_err(|rejection| HttpError::invalid_request(format!("invalid query string: {}", rejection.body_text())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        #[allow(dead_code)]
        phone: String,
    }

    #[test]
    fn rejects_unknown_fields_wrong_types_and_garbage() {
        for bad in [r#"{"phone":"x","extra":1}"#, r#"{"phone":5}"#, "{", "", "null"] {
            let error = parse::<Body>(bad.as_bytes()).unwrap_err();
            assert_eq!(error.code, "invalid_request", "{bad}");
            assert_eq!(error.status, StatusCode::BAD_REQUEST);
        }
        assert!(parse::<Body>(br#"{"phone":"x"}"#).is_ok());
    }

    #[test]
    fn integers_are_json_schema_integers() {
        #[derive(Deserialize)]
        struct Rating {
            #[serde(deserialize_with = "integer")]
            rating: i64,
        }
        let read = |text: &str| serde_json::from_str::<Rating>(text).map(|r| r.rating).map_err(|e| e.to_string());
        assert_eq!(read(r#"{"rating":4}"#), Ok(4));
        assert_eq!(read(r#"{"rating":4.0}"#), Ok(4));
        assert!(read(r#"{"rating":4.5}"#).is_err());
        assert!(read(r#"{"rating":1e300}"#).is_err());
        assert!(read(r#"{"rating":"4"}"#).is_err());
    }

    #[test]
    fn optional_integers_are_json_schema_integers_or_nothing() {
        #[derive(Deserialize)]
        struct Figures {
            #[serde(default, deserialize_with = "optional_integer")]
            frames: Option<i64>,
        }
        let read = |text: &str| serde_json::from_str::<Figures>(text).map(|f| f.frames).map_err(|e| e.to_string());
        assert_eq!(read(r#"{"frames":234.0}"#), Ok(Some(234)));
        assert_eq!(read(r#"{"frames":null}"#), Ok(None));
        assert_eq!(read("{}"), Ok(None));
        assert!(read(r#"{"frames":1.5}"#).is_err());
        assert!(read(r#"{"frames":"3"}"#).is_err());
    }
}
