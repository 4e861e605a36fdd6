//! A small blocking client for a Confluent-compatible schema registry.
//!
//! Only two calls are used: `GET {url}/schemas/ids/{id}` to fetch a writer schema, and
//! `POST {url}/subjects/{subject}/versions` to register ours. The client does not cache: the
//! decoder and the encoder keep their own caches, because what they cache differs (a resolved
//! reader plan, an id per subject).
//!
//! Failures are classified for the caller: a refused connection, a timeout, a `5xx`, `408`,
//! `429`, or (when fetching) `401`/`403` and any answer that is not the registry's JSON are
//! *transient* (`registry_unavailable`): dead-lettering every message because the registry is
//! down or misconfigured would lose data. Only the registry's own "schema not found" (`404` with
//! `error_code` 40403) is poison (`unknown_schema`).

use crate::error::{DecodeError, EncodeError};
use std::time::Duration;

/// The media type of the registry's API, sent as `Accept` and as the `Content-Type` of bodies.
pub const REGISTRY_MEDIA_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// How long one registry call may take in total, connecting included.
pub const REGISTRY_TIMEOUT: Duration = Duration::from_secs(10);

/// A Confluent-compatible schema registry at a base URL, such as `http://registry:8081`.
#[derive(Debug, Clone)]
pub struct SchemaRegistry {
    url: String,
    agent: ureq::Agent,
}

enum Answer {
    Ok(String),
    Status(u16, String),
}

impl SchemaRegistry {
    /// Makes a client for the registry at `url` (a trailing `/` is ignored). Nothing is sent yet.
    ///
    /// Proxies named by the `HTTP_PROXY`/`HTTPS_PROXY`/`NO_PROXY` environment are honoured.
    pub fn new(url: impl Into<String>) -> SchemaRegistry {
        let mut url = url.into();
        while url.ends_with('/') {
            url.pop();
        }
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(REGISTRY_TIMEOUT))
            .http_status_as_error(false)
            .build()
            .into();
        SchemaRegistry { url, agent }
    }

    /// The base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn answer(
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Answer, String> {
        let mut response = result.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .read_to_string()
            .map_err(|e| format!("HTTP {status}, body unreadable: {e}"))?;
        if status == 200 {
            Ok(Answer::Ok(body))
        } else {
            Ok(Answer::Status(status, excerpt(&body)))
        }
    }

    /// Fetches the schema text registered under `id`.
    ///
    /// Errors: `unknown_schema` when the registry answers `404` with error code 40403, or the
    /// schema is not Avro;
    /// `registry_unavailable` (transient) for everything else that goes wrong.
    pub fn fetch_schema(&self, id: u32) -> Result<String, DecodeError> {
        let url = format!("{}/schemas/ids/{id}", self.url);
        let unavailable = |why: String| DecodeError::RegistryUnavailable {
            url: url.clone(),
            why,
        };
        let result = self
            .agent
            .get(&url)
            .header("Accept", REGISTRY_MEDIA_TYPE)
            .call();
        let body = match Self::answer(result).map_err(unavailable)? {
            Answer::Ok(body) => body,
            // Only the registry's own "schema not found" (error code 40403) is poison. Any
            // other 404 means the URL points at something that is not a registry: retrying
            // while an operator fixes it beats dead-lettering every message.
            Answer::Status(404, body) if error_code(&body) == Some(40403) => {
                return Err(DecodeError::UnknownSchema(format!(
                    "schema id {id} is not in the registry at {} ({body})",
                    self.url
                )))
            }
            Answer::Status(404, body) => {
                return Err(unavailable(format!(
                    "HTTP 404 without the registry's error code 40403; is the URL a schema \
                     registry? ({body})"
                )))
            }
            Answer::Status(status, body) => {
                return Err(unavailable(format!("HTTP {status}: {body}")))
            }
        };
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct SchemaById {
            schema: String,
            #[serde(default)]
            schema_type: Option<String>,
        }
        let parsed: SchemaById = serde_json::from_str(&body).map_err(|e| {
            unavailable(format!(
                "the answer is not the registry's JSON ({e}): {}",
                excerpt(&body)
            ))
        })?;
        match parsed.schema_type.as_deref() {
            None | Some("AVRO") => Ok(parsed.schema),
            Some(other) => Err(DecodeError::UnknownSchema(format!(
                "schema id {id} is a {other} schema, not Avro"
            ))),
        }
    }

    /// Registers `schema` (JSON text) under `subject` and returns its id. Registering a schema
    /// the subject already has returns the existing id.
    ///
    /// Errors: `registry_rejected` when the registry refuses the schema itself (400, 409, 415,
    /// 422: invalid or incompatible); `registry_unavailable` (transient) otherwise, bad
    /// credentials included (fixed without a release, and not a reason to divert actions).
    pub fn register(&self, subject: &str, schema: &str) -> Result<u32, EncodeError> {
        let url = format!("{}/subjects/{}/versions", self.url, percent_encode(subject));
        let unavailable = |why: String| EncodeError::RegistryUnavailable {
            url: url.clone(),
            why,
        };
        let body = serde_json::json!({ "schema": schema }).to_string();
        let result = self
            .agent
            .post(&url)
            .header("Accept", REGISTRY_MEDIA_TYPE)
            .header("Content-Type", REGISTRY_MEDIA_TYPE)
            .send(&body);
        let body = match Self::answer(result).map_err(unavailable)? {
            Answer::Ok(body) => body,
            // The schema itself refused: malformed (400, 415, 422) or incompatible (409).
            // Other answers (401 and 403 from a credential blip, 404, 408, 429, 5xx) may pass.
            Answer::Status(status, body) if matches!(status, 400 | 409 | 415 | 422) => {
                return Err(EncodeError::RegistryRejected {
                    url: url.clone(),
                    status,
                    body,
                })
            }
            Answer::Status(status, body) => {
                return Err(unavailable(format!("HTTP {status}: {body}")))
            }
        };
        #[derive(serde::Deserialize)]
        struct Registered {
            id: u32,
        }
        serde_json::from_str::<Registered>(&body)
            .map(|r| r.id)
            .map_err(|e| {
                unavailable(format!(
                    "the answer is not the registry's JSON ({e}): {}",
                    excerpt(&body)
                ))
            })
    }
}

/// The registry's `error_code` in an error body, if it has one.
fn error_code(body: &str) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()?
        .get("error_code")?
        .as_u64()
}

/// The start of a response body, on one line, for error messages.
fn excerpt(body: &str) -> String {
    const MAX: usize = 200;
    let one_line: String = body
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match one_line.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}...", &one_line[..at]),
        None => one_line,
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters, for a subject in a path.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_percent_encoded() {
        assert_eq!(percent_encode("actions.email-value"), "actions.email-value");
        assert_eq!(percent_encode("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn trailing_slashes_are_dropped() {
        assert_eq!(
            SchemaRegistry::new("http://r:8081//").url(),
            "http://r:8081"
        );
    }
}
