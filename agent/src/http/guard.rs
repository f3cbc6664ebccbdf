//! The gateway's own defences, checked before any route: who may talk to it at all.
//!
//! ```text
//!  request ─► Host allowed? ──no──► 403 host_not_allowed    (DNS rebinding)
//!          ─► Origin / Sec-Fetch-Site foreign? ──► 403 cross_origin  (a hostile web page)
//!          ─► tokens configured and no valid bearer? ──► 401 unauthorized
//!          ─► a body on a JSON route not application/json? ──► 415 (a form post)
//!          ─► the routes
//! ```
//!
//! A browser page on another site can make a browser send requests to a loopback
//! address: a "simple" cross-origin POST goes out without a preflight, and a DNS name
//! rebound to 127.0.0.1 makes even reads same-origin for the page. The Host check
//! defeats the rebinding (the page's name is not one the gateway answers to); the
//! Origin check and the JSON content type defeat the cross-origin writes.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::HttpError;

/// Who the gateway answers: the Host names, the Origins of pages allowed to call it, and
/// the bearer tokens it requires (none: no token needed).
#[derive(Clone, Debug, Default)]
pub struct HttpPolicy {
    /// Host names (without port) besides localhost and the loopback addresses.
    pub allowed_hosts: Vec<String>,
    /// Origins (`scheme://host:port`) besides the gateway's own.
    pub allowed_origins: Vec<String>,
    /// Bearer tokens; when not empty, every request must carry one of them.
    pub tokens: Vec<String>,
}

/// Why a gateway configuration is refused at start.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "the HTTP gateway on {address} is reachable beyond this host: give --http-token-file \
         so that it asks for a bearer token, or bind a loopback address"
    )]
    OpenWithoutTokens { address: SocketAddr },
    #[error("token file {path}: {message}")]
    TokenFile { path: String, message: String },
}

impl HttpPolicy {
    /// Refuses a gateway bound beyond loopback without tokens.
    pub fn check(&self, address: SocketAddr) -> Result<(), PolicyError> {
        if !address.ip().is_loopback() && self.tokens.is_empty() {
            return Err(PolicyError::OpenWithoutTokens { address });
        }
        Ok(())
    }

    /// Reads tokens from a file: one per line; blank lines and `#` comments are skipped.
    pub fn read_tokens(path: &std::path::Path) -> Result<Vec<String>, PolicyError> {
        let error = |message: String| PolicyError::TokenFile {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        let tokens: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(str::to_string)
            .collect();
        if tokens.is_empty() {
            return Err(error("no token in it".into()));
        }
        if let Some(short) = tokens.iter().find(|t| t.len() < 16) {
            return Err(error(format!(
                "a token of {} characters is too short to guess-proof (at least 16)",
                short.len()
            )));
        }
        Ok(tokens)
    }
}

/// What the guard needs at request time.
#[derive(Debug)]
pub(crate) struct Guard {
    policy: HttpPolicy,
    /// The address the gateway is bound to: its own origin's host and port.
    local: SocketAddr,
}

/// The middleware's state: the guard, and the agent whose replica holds the core's
/// tokens.
#[derive(Debug)]
pub(crate) struct Guarded {
    pub(crate) guard: Guard,
    pub(crate) context: std::sync::Arc<crate::agent::AgentContext>,
}

impl Guard {
    pub(crate) fn new(policy: HttpPolicy, local: SocketAddr) -> Self {
        Guard { policy, local }
    }

    fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if host == "localhost" {
            return true;
        }
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return ip.is_loopback()
                || (ip == self.local.ip() && !ip.is_unspecified())
                || self.policy.allowed_hosts.iter().any(|h| h == bare);
        }
        self.policy
            .allowed_hosts
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(&host))
    }

    /// Checks one request's headers; answers the name of the core token it presented
    /// (None: no token, or one of the gateway's own), or says what was refused.
    /// `core_token` names the core's token whose SHA-256 is the given digest.
    pub(crate) fn check(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        core_token: &dyn Fn(&[u8]) -> Option<String>,
    ) -> Result<Option<String>, HttpError> {
        let forbidden =
            |code, message: String| HttpError::new(StatusCode::FORBIDDEN, code, message);
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .ok_or_else(|| HttpError::bad_request("a request needs a Host header"))?;
        let (name, _) = split_host_port(host);
        if !self.host_allowed(name) {
            return Err(forbidden(
                "host_not_allowed",
                format!(
                    "Host {host:?} is not one this gateway answers to (localhost, loopback \
                     addresses and --http-allow-host)"
                ),
            ));
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            if !self.origin_allowed(origin) {
                return Err(forbidden(
                    "cross_origin",
                    format!(
                        "requests from pages of origin {origin:?} are refused (--http-allow-origin)"
                    ),
                ));
            }
        } else if let Some(site) = headers.get("sec-fetch-site")
            && !matches!(site.as_bytes(), b"same-origin" | b"none")
        {
            return Err(forbidden(
                "cross_origin",
                "requests a browser sends for another site are refused".into(),
            ));
        }
        let presented = match headers.get(header::AUTHORIZATION) {
            None => None,
            Some(value) => Some(
                value
                    .to_str()
                    .ok()
                    .and_then(|h| h.strip_prefix("Bearer "))
                    .ok_or_else(|| unauthorized("Authorization must be Bearer TOKEN"))?,
            ),
        };
        let token_name = match presented {
            None if self.policy.tokens.is_empty() => None,
            None => {
                return Err(unauthorized(
                    "this gateway needs Authorization: Bearer TOKEN",
                ));
            }
            Some(token) => {
                let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
                match core_token(digest.as_ref()) {
                    Some(name) => Some(name),
                    None if self
                        .policy
                        .tokens
                        .iter()
                        .any(|t| constant_time_eq(t, token)) =>
                    {
                        None
                    }
                    None => return Err(unauthorized("the bearer token is not known here")),
                }
            }
        };
        let has_body = headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|len| len.as_bytes() != b"0")
            || headers.contains_key(header::TRANSFER_ENCODING);
        let raw_body = path.starts_with("/v1/kv/");
        if has_body && !raw_body && method != Method::GET {
            let json = headers
                .get(header::CONTENT_TYPE)
                .and_then(|h| h.to_str().ok())
                .map(|t| {
                    t.split(';')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .eq_ignore_ascii_case("application/json")
                })
                .unwrap_or(false);
            if !json {
                return Err(HttpError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "a JSON body needs Content-Type: application/json",
                ));
            }
        }
        Ok(token_name)
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        if self.policy.allowed_origins.iter().any(|o| o == origin) {
            return true;
        }
        let Some(rest) = origin.strip_prefix("http://") else {
            return false;
        };
        let (name, port) = split_host_port(rest);
        port == Some(self.local.port()) && self.host_allowed(name)
    }
}

/// `host:port`, `[v6]:port` or a bare name, into the name and the port if any.
fn split_host_port(host: &str) -> (&str, Option<u16>) {
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((name, tail)) => (name, tail.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (host, None),
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') => (name, port.parse().ok()),
        _ => (host, None),
    }
}

fn unauthorized(message: &str) -> HttpError {
    HttpError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

tokio::task_local! {
    /// The core token the HTTP request being served presented (None: none): who it is
    /// to the access rules.
    pub(crate) static TOKEN: Option<String>;
}

/// The middleware: refuses what [`Guard::check`] refuses, before any route runs, and
/// runs the route as the token's holder.
pub(crate) async fn guard(
    State(guarded): State<std::sync::Arc<Guarded>>,
    request: Request,
    next: Next,
) -> Response {
    let core_token = |digest: &[u8]| {
        guarded.context.replica.read(|r| {
            r.machine()
                .access()
                .token_named_by(digest)
                .map(str::to_string)
        })
    };
    let checked = guarded.guard.check(
        request.method(),
        request.uri().path(),
        request.headers(),
        &core_token,
    );
    match checked {
        Ok(token) => TOKEN.scope(token, next.run(request)).await,
        Err(refused) => refused.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    fn guard(policy: HttpPolicy) -> Guard {
        Guard::new(policy, "127.0.0.1:7201".parse().unwrap())
    }

    /// The core knows one token, `core-token-0123456789`, named `ci`.
    fn core_token(digest: &[u8]) -> Option<String> {
        let known = ring::digest::digest(&ring::digest::SHA256, b"core-token-0123456789");
        (digest == known.as_ref()).then(|| "ci".to_string())
    }

    /// Loopback names pass; a rebound name, a foreign origin, another site's fetch, a
    /// form post and a missing token do not.
    #[test]
    fn the_guard_refuses_what_a_hostile_page_sends() {
        let g = guard(HttpPolicy::default());
        let post = Method::POST;
        for host in [
            "127.0.0.1:7201",
            "localhost:7201",
            "[::1]:7201",
            "localhost",
            "127.0.0.2",
        ] {
            assert!(
                g.check(
                    &post,
                    "/v1/locks/x",
                    &headers(&[("host", host)]),
                    &core_token
                )
                .is_ok(),
                "{host}"
            );
        }
        let refused = |h: &[(&'static str, &str)], code: &str| {
            let error = g
                .check(&post, "/v1/shards/M3/replicas", &headers(h), &core_token)
                .unwrap_err();
            assert_eq!(error.code, code, "{h:?}");
        };
        refused(&[("host", "rebind.evil.example")], "host_not_allowed");
        refused(&[("host", "rebind.evil.example:7201")], "host_not_allowed");
        refused(
            &[
                ("host", "127.0.0.1:7201"),
                ("origin", "http://evil.example"),
            ],
            "cross_origin",
        );
        refused(
            &[("host", "127.0.0.1:7201"), ("origin", "null")],
            "cross_origin",
        );
        refused(
            &[
                ("host", "127.0.0.1:7201"),
                ("origin", "http://localhost:3000"),
            ],
            "cross_origin",
        );
        refused(
            &[("host", "127.0.0.1:7201"), ("sec-fetch-site", "cross-site")],
            "cross_origin",
        );
        refused(
            &[
                ("host", "127.0.0.1:7201"),
                ("content-type", "text/plain"),
                ("content-length", "30"),
            ],
            "unsupported_media_type",
        );
        // The status page's own origin, and a JSON body, pass.
        assert!(
            g.check(
                &post,
                "/v1/shards/M3/replicas",
                &headers(&[
                    ("host", "127.0.0.1:7201"),
                    ("origin", "http://127.0.0.1:7201"),
                    ("content-type", "application/json; charset=utf-8"),
                    ("content-length", "30"),
                ]),
                &core_token
            )
            .is_ok()
        );
        // A raw value under /v1/kv/ takes any type.
        assert!(
            g.check(
                &Method::PUT,
                "/v1/kv/a",
                &headers(&[
                    ("host", "localhost"),
                    ("content-type", "text/plain"),
                    ("content-length", "3")
                ]),
                &core_token
            )
            .is_ok()
        );
        let with_tokens = guard(HttpPolicy {
            tokens: vec!["s3cret-token-0123456789".into()],
            allowed_hosts: vec!["corral.example".into()],
            ..HttpPolicy::default()
        });
        let get = Method::GET;
        let error = with_tokens
            .check(
                &get,
                "/v1/status",
                &headers(&[("host", "corral.example")]),
                &core_token,
            )
            .unwrap_err();
        assert_eq!(error.code, "unauthorized");
        let error = with_tokens
            .check(
                &get,
                "/v1/status",
                &headers(&[
                    ("host", "corral.example"),
                    ("authorization", "Bearer wrong"),
                ]),
                &core_token,
            )
            .unwrap_err();
        assert_eq!(error.code, "unauthorized");
        assert!(
            with_tokens
                .check(
                    &get,
                    "/v1/status",
                    &headers(&[
                        ("host", "corral.example:80"),
                        ("authorization", "Bearer s3cret-token-0123456789")
                    ]),
                    &core_token
                )
                .is_ok()
        );
        // A token of the core names its holder, with or without the gateway's own tokens;
        // an unknown one is refused rather than taken for no token.
        for g in [&with_tokens, &guard(HttpPolicy::default())] {
            let named = g.check(
                &get,
                "/v1/status",
                &headers(&[
                    ("host", "localhost"),
                    ("authorization", "Bearer core-token-0123456789"),
                ]),
                &core_token,
            );
            assert_eq!(named.unwrap(), Some("ci".to_string()));
            let unknown = g.check(
                &get,
                "/v1/status",
                &headers(&[
                    ("host", "localhost"),
                    ("authorization", "Bearer guessed-token-000000"),
                ]),
                &core_token,
            );
            assert_eq!(unknown.unwrap_err().code, "unauthorized");
        }
    }

    /// Beyond loopback a gateway needs tokens.
    #[test]
    fn an_open_gateway_needs_tokens() {
        let open: SocketAddr = "0.0.0.0:7201".parse().unwrap();
        assert!(HttpPolicy::default().check(open).is_err());
        assert!(
            HttpPolicy::default()
                .check("127.0.0.1:7201".parse().unwrap())
                .is_ok()
        );
        let tokens = HttpPolicy {
            tokens: vec!["x".repeat(20)],
            ..HttpPolicy::default()
        };
        assert!(tokens.check(open).is_ok());
    }
}
