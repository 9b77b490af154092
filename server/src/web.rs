//! The browser client (`web/`), embedded in the binary and served at `/` by
//! `courier serve` and `courier serve signaling`: each file with its type,
//! `Cache-Control: no-cache` and an ETag (a browser revalidates and gets 304
//! while the binary is the same), and a strict Content-Security-Policy: no
//! inline script or style, nothing fetched or connected to but the page's
//! own origin.

use std::sync::LazyLock;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

/// The policy every page file is served with. `connect-src 'self'` covers
/// the API and the signaling WebSocket of the same origin; `media-src` the
/// call's audio; `img-src data:` nothing but inline icons.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; media-src 'self' blob:; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    etag: HeaderValue,
}

fn asset(path: &'static str, content_type: &'static str, body: &'static [u8]) -> Asset {
    let digest = Sha256::digest(body);
    let etag = format!("\"{}\"", courier_common::text::hex(&digest[..12]));
    Asset { path, content_type, body, etag: HeaderValue::from_str(&etag).expect("hex is a valid header value") }
}

static ASSETS: LazyLock<[Asset; 6]> = LazyLock::new(|| {
    [
        asset("/", "text/html; charset=utf-8", include_bytes!("../../web/index.html")),
        asset("/app.js", "text/javascript; charset=utf-8", include_bytes!("../../web/app.js")),
        asset("/call.js", "text/javascript; charset=utf-8", include_bytes!("../../web/call.js")),
        asset("/sas.js", "text/javascript; charset=utf-8", include_bytes!("../../web/sas.js")),
        asset("/style.css", "text/css; charset=utf-8", include_bytes!("../../web/style.css")),
        // The SAS's emoji table: the very file the softphone compiles in.
        asset("/sas-emoji.txt", "text/plain; charset=utf-8", include_bytes!("../../protocol/sas-emoji.txt")),
    ]
});

fn serve(path: &str, headers: &HeaderMap) -> Response {
    let Some(asset) = ASSETS.iter().find(|asset| asset.path == path) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|tag| tag.trim() == asset.etag || tag.trim() == "*"));
    let common = [
        (header::ETAG, asset.etag.clone()),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY)),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
    ];
    if fresh {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (StatusCode::OK, common, [(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type))], asset.body)
        .into_response()
}

/// The page.
#[utoipa::path(get, path = "/", tag = "web",
    params(("If-None-Match" = Option<String>, Header, description = "an ETag this server sent")),
    responses((status = 200, content_type = "text/html", body = String, description = "the browser client"),
              (status = 304, description = "the copy the browser has is current")))]
async fn index(headers: HeaderMap) -> Response {
    serve("/", &headers)
}

/// The page's script (an ES module).
#[utoipa::path(get, path = "/app.js", tag = "web",
    params(("If-None-Match" = Option<String>, Header, description = "an ETag this server sent")),
    responses((status = 200, content_type = "text/javascript", body = String),
              (status = 304, description = "the copy the browser has is current")))]
async fn script(headers: HeaderMap) -> Response {
    serve("/app.js", &headers)
}

/// The page's calls: signaling and WebRTC (an ES module).
#[utoipa::path(get, path = "/call.js", tag = "web",
    params(("If-None-Match" = Option<String>, Header, description = "an ETag this server sent")),
    responses((status = 200, content_type = "text/javascript", body = String),
              (status = 304, description = "the copy the browser has is current")))]
async fn call_script(headers: HeaderMap) -> Response {
    serve("/call.js", &headers)
}

/// The short authentication string's code (an ES module).
#[utoipa::path(get, path = "/sas.js", tag = "web",
    params(("If-None-Match" = Option<String>, Header, description = "an ETag this server sent")),
    responses((status = 200, content_type = "text/javascript", body = String),
              (status = 304, description = "the copy the browser has is current")))]
async fn sas_script(headers: HeaderMap) -> Response {
    serve("/sas.js", &headers)
}

/// The short authentication string's 256 emojis, one line each (code
/// point, emoji, name, tab-separated; `#` lines are comments): the table
/// the softphone compiles in.
#[utoipa::path(get, path = "/sas-emoji.txt", tag = "web",
    params(("If-None-Match" = Option<String>, Header, description = "an ETag this server sent")),
    responses((status = 200, content_type = "text/plain", body = String),
              (status = 304, description = "the copy the browser has is current")))]
async fn sas_emoji(headers: HeaderMap) -> Response {
    serve("/sas-emoji.txt", &headers)
}

/// The page's style sheet.
#[utoipa::path(get, path = "/style.css", tag = "web",
    params(("If-None-Match" = Option<String>, Header, description = "an ETag this server sent")),
    responses((status = 200, content_type = "text/css", body = String),
              (status = 304, description = "the copy the browser has is current")))]
async fn style(headers: HeaderMap) -> Response {
    serve("/style.css", &headers)
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(index, script, call_script, sas_script, sas_emoji, style), tags((name = "web", description = "The browser client")))]
pub struct WebDoc;

pub fn routes() -> Router {
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(script))
        .route("/call.js", get(call_script))
        .route("/sas.js", get(sas_script))
        .route("/sas-emoji.txt", get(sas_emoji))
        .route("/style.css", get(style))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_file_has_its_type_an_etag_and_the_policy_and_revalidates() {
        for (path, kind) in [
            ("/", "text/html"),
            ("/app.js", "text/javascript"),
            ("/call.js", "text/javascript"),
            ("/sas.js", "text/javascript"),
            ("/style.css", "text/css"),
            ("/sas-emoji.txt", "text/plain"),
        ] {
            let response = serve(path, &HeaderMap::new());
            assert_eq!(response.status(), StatusCode::OK);
            let headers = response.headers();
            assert!(headers[header::CONTENT_TYPE].to_str().unwrap().starts_with(kind));
            assert_eq!(headers[header::CONTENT_SECURITY_POLICY], CONTENT_SECURITY_POLICY);
            assert_eq!(headers[header::CACHE_CONTROL], "no-cache");
            let etag = headers[header::ETAG].clone();
            let mut conditional = HeaderMap::new();
            conditional.insert(header::IF_NONE_MATCH, etag.clone());
            let again = serve(path, &conditional);
            assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
            assert_eq!(again.headers()[header::ETAG], etag);
            conditional.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"other\""));
            assert_eq!(serve(path, &conditional).status(), StatusCode::OK);
        }
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"), "no inline script or style");
    }

    #[test]
    fn the_page_carries_the_accessible_names_of_api_md() {
        let page = std::str::from_utf8(include_bytes!("../../web/index.html")).unwrap();
        for label in ["Phone number", "Code", "Number to call", "Amount", "Recipient phone number"] {
            assert!(page.contains(&format!(">{label}</label>")), "input {label}");
        }
        for button in ["Send code", "Sign in", "Call", "Answer", "Decline", "Hang up", "Mute", "Send money", "Sign out"]
        {
            assert!(page.contains(&format!(">{button}</button>")), "button {button}");
        }
        for region in ["Balance", "Security code", "Connection"] {
            assert!(page.contains(&format!(r#"role="region" aria-label="{region}""#)), "region {region}");
        }
        assert!(!page.contains("<script>") && !page.contains("style="), "nothing inline");
    }
}
