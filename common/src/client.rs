//! The command-line tools' client of Courier's HTTP API (`courier admin`,
//! `courier call`, the benchmarks): JSON requests whose errors come back in
//! the shared error shape as `code (status): message`, and aligned tables.

use serde_json::Value;

/// An HTTP client builder with TLS ready (rustls with the ring provider).
pub fn http_client_builder() -> reqwest::ClientBuilder {
    // Installing twice is harmless: the first provider stays.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

/// One JSON request to a Courier server with an optional bearer credential;
/// errors come back as the server's `code (status): message`.
pub async fn request(
    http: &reqwest::Client,
    base: &str,
    method: reqwest::Method,
    path: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> Result<Value, String> {
    request_keyed(http, base, method, path, bearer, None, body).await
}

/// [`request`] with an `Idempotency-Key` when `key` is given.
pub async fn request_keyed(
    http: &reqwest::Client,
    base: &str,
    method: reqwest::Method,
    path: &str,
    bearer: Option<&str>,
    key: Option<&str>,
    body: Option<Value>,
) -> Result<Value, String> {
    let mut request = http.request(method, format!("{base}{path}"));
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.map_err(|error| format!("cannot reach {base}: {error}"))?;
    let status = response.status();
    let retry_after_s = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok()?.trim().parse::<u64>().ok());
    let text = response.text().await.map_err(|error| error.to_string())?;
    if status.is_success() {
        return Ok(if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        });
    }
    Err(refusal(status.as_u16(), retry_after_s, &text))
}

/// What a refused request tells a person: the error's code and message in
/// the shared error shape, and when to try again where the server said.
pub fn refusal(status: u16, retry_after_s: Option<u64>, body: &str) -> String {
    let said = match serde_json::from_str::<Value>(body) {
        Ok(value) if value["error"]["code"].is_string() => format!(
            "{} ({status}): {}",
            value["error"]["code"].as_str().unwrap_or(""),
            value["error"]["message"].as_str().unwrap_or("")
        ),
        _ => format!("the server answered {status}"),
    };
    match retry_after_s {
        Some(seconds) => format!("{said} (try again in {seconds} s)"),
        None => said,
    }
}

/// Prints rows as an aligned table with the given columns.
pub fn print_table(columns: &[&str], rows: &[Value]) {
    let cell = |row: &Value, column: &str| match &row[column] {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let widths: Vec<usize> = columns
        .iter()
        .map(|column| rows.iter().map(|row| cell(row, column).chars().count()).max().unwrap_or(0).max(column.len()))
        .collect();
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(text, width)| format!("{text:<width$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    println!("{}", line(columns.iter().map(|c| c.to_uppercase()).collect()));
    for row in rows {
        println!("{}", line(columns.iter().map(|column| cell(row, column)).collect()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_say_the_code_the_message_and_when_to_retry() {
        let body = r#"{"error":{"code":"rate_limited","message":"too many code requests; wait and try again"}}"#;
        assert_eq!(
            refusal(429, Some(42), body),
            "rate_limited (429): too many code requests; wait and try again (try again in 42 s)"
        );
        assert_eq!(refusal(404, None, r#"{"error":{"code":"not_found","message":"no"}}"#), "not_found (404): no");
        assert_eq!(refusal(502, None, "<html>"), "the server answered 502");
    }
}
