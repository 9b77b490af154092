//! The finishing pass over a process's merged OpenAPI document. Each handler
//! declares what it answers itself; the answers that the shared layers give
//! on every route are declared here, once, from what the route takes:
//!
//! - every route: 500 `internal`, 503 `too_many_connections`/`timeout`
//!   (with `Retry-After`), 414 `uri_too_long` and 431 `headers_too_large`
//!   (the connection layer, before any handler);
//! - a route with parameters: 400 `invalid_request`; a paged one, 422
//!   `invalid_cursor` (well formed, not handed out by this server);
//! - a route with a JSON body: 400 `invalid_request`, 408 `body_timeout`,
//!   413 `payload_too_large`, 415 `unsupported_media_type`;
//! - a user route: 401 `unauthenticated`; an operator route: 401 and 403
//!   `forbidden`.
//!
//! Every 429 and 503 declares its `Retry-After` header (the error layer
//! always sends one), and every error answer the `ErrorBody` shape.

use serde_json::{Map, Value, json};

const ERROR_BODY: &str = "#/components/schemas/ErrorBody";

/// The shared answers, added to `doc` (a serialized OpenAPI 3.1 document)
/// where its operations do not already declare them; where they do, the
/// shared codes are named in the description too.
pub fn finish(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else { return };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else { continue };
        let path_params = path.contains('{');
        for (method, operation) in item.iter_mut() {
            if !is_method(method) {
                continue;
            }
            if let Some(operation) = operation.as_object_mut() {
                finish_operation(operation, path_params);
            }
        }
    }
    tighten_error_body(doc);
}

fn is_method(name: &str) -> bool {
    matches!(name, "get" | "put" | "post" | "delete" | "patch" | "head" | "options" | "trace")
}

fn finish_operation(operation: &mut Map<String, Value>, path_params: bool) {
    let has_params =
        path_params || operation.get("parameters").and_then(Value::as_array).is_some_and(|p| !p.is_empty());
    let has_body = operation.contains_key("requestBody");
    let schemes: Vec<String> = operation
        .get("security")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .flat_map(|requirement| requirement.keys().cloned())
        .collect();
    let mut shared: Vec<(u16, &str)> = vec![
        (414, "`uri_too_long`"),
        (431, "`headers_too_large`"),
        (500, "`internal`"),
        (503, "`too_many_connections`, `timeout`"),
    ];
    if has_params || has_body {
        shared.push((400, "`invalid_request`"));
    }
    let paged = operation
        .get("parameters")
        .and_then(Value::as_array)
        .is_some_and(|params| params.iter().any(|param| param["name"] == "cursor" && param["in"] == "query"));
    if paged {
        shared.push((422, "`invalid_cursor`"));
    }
    if has_body {
        shared.extend([(408, "`body_timeout`"), (413, "`payload_too_large`"), (415, "`unsupported_media_type`")]);
    }
    if !schemes.is_empty() {
        shared.push((401, "`unauthenticated`"));
    }
    if schemes.iter().any(|scheme| scheme == "operator") {
        shared.push((403, "`forbidden` (the key's role is too low)"));
    }
    let responses = operation.entry("responses").or_insert_with(|| json!({}));
    let Some(responses) = responses.as_object_mut() else { return };
    for (status, codes) in shared {
        let key = status.to_string();
        match responses.get_mut(&key).and_then(Value::as_object_mut) {
            Some(existing) => {
                let description = existing.get("description").and_then(Value::as_str).unwrap_or("").to_owned();
                let missing: Vec<&str> = codes.split(", ").filter(|code| !description.contains(*code)).collect();
                if !missing.is_empty() {
                    let joined = missing.join(", ");
                    let description =
                        if description.is_empty() { joined } else { format!("{description}; also {joined}") };
                    existing.insert("description".into(), Value::String(description));
                }
                existing.entry("content").or_insert_with(error_content);
            }
            None => {
                responses.insert(key, json!({"description": codes, "content": error_content()}));
            }
        }
    }
    for (status, response) in responses.iter_mut() {
        let Some(response) = response.as_object_mut() else { continue };
        let required = match status.as_str() {
            "429" | "503" => true,
            "409" => false,
            _ => continue,
        };
        let headers = response.entry("headers").or_insert_with(|| json!({}));
        if let Some(headers) = headers.as_object_mut() {
            headers.entry("Retry-After").or_insert_with(|| {
                json!({
                    "description": "Seconds to wait before retrying",
                    "required": required,
                    "schema": {"type": "integer", "minimum": 1},
                })
            });
        }
    }
}

fn error_content() -> Value {
    json!({"application/json": {"schema": {"$ref": ERROR_BODY}}})
}

/// The error body has exactly its two fields.
fn tighten_error_body(doc: &mut Value) {
    for name in ["ErrorBody", "ErrorDetail"] {
        if let Some(schema) = doc.pointer_mut(&format!("/components/schemas/{name}")).and_then(Value::as_object_mut) {
            schema.insert("additionalProperties".into(), Value::Bool(false));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_answers_follow_what_the_route_takes() {
        let mut doc = json!({
            "paths": {
                "/v1/things/{id}": {
                    "post": {
                        "requestBody": {"content": {}},
                        "security": [{"operator": []}],
                        "responses": {"400": {"description": "`invalid_amount`"}, "201": {"description": ""}}
                    },
                    "parameters": []
                },
                "/healthz": {"get": {"responses": {"200": {"description": ""}}}}
            },
            "components": {"schemas": {"ErrorBody": {"type": "object"}}}
        });
        finish(&mut doc);
        let post = &doc["paths"]["/v1/things/{id}"]["post"]["responses"];
        for status in ["400", "401", "403", "408", "413", "414", "415", "431", "500", "503"] {
            assert_eq!(post[status]["content"]["application/json"]["schema"]["$ref"], ERROR_BODY, "{status}");
        }
        assert_eq!(post["400"]["description"], "`invalid_amount`; also `invalid_request`");
        assert_eq!(post["503"]["headers"]["Retry-After"]["required"], true);
        let health = &doc["paths"]["/healthz"]["get"]["responses"];
        assert!(health.get("400").is_none() && health.get("401").is_none() && health.get("413").is_none());
        assert!(health.get("500").is_some());
        assert_eq!(doc["components"]["schemas"]["ErrorBody"]["additionalProperties"], false);
    }
}
