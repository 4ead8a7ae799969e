//! What a request must show before a handler sees it: a bearer token with the route's scope,
//! and, on a write, an origin and a content type that a cross-site page cannot forge.
//!
//! Each route needs one scope (or none), decided in [`needs`] from the method and path alone,
//! so that a route added later under `/v1/` is `admin` until it says otherwise. A presented
//! token is hashed once and compared with every configured hash in constant time; only the
//! hashes are kept. The caller's scopes travel to the handlers as a [`Caller`] extension (SQL
//! asks it whether the raw and quarantine tables may be read).
//!
//! A browser sends a cross-site "simple" request (a form post, `text/plain`) without asking
//! first, so every `POST` must say `Content-Type: application/json` (or NDJSON for events),
//! which no form can, and a request whose `Origin` is another site's is refused on writes.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use lambdaflow_common::auth::{AuthConfig, AuthMode, Scope, token_hash};
use lambdaflow_common::config::ServingConfig;
use subtle::ConstantTimeEq;

use crate::http::error::ApiError;

/// One configured token, by its hash.
#[derive(Debug)]
struct Token {
    name: String,
    hash: [u8; 32],
    scopes: Vec<Scope>,
}

/// What the guard checks, built once from `[serving]`.
#[derive(Debug)]
pub struct Guard {
    /// `None` when auth is off.
    tokens: Option<Vec<Token>>,
    metrics_public: bool,
    allowed_origins: Vec<String>,
    tls: bool,
}

/// Who is calling: the token's name and scopes (every scope when auth is off).
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's name; `None` when auth is off.
    pub name: Option<String>,
    scopes: Vec<Scope>,
}

impl Caller {
    /// Whether the caller holds `scope`.
    pub fn may(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

/// Why the tokens of a config cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("token `{name}`: {message}")]
pub struct TokenError {
    name: String,
    message: String,
}

impl Guard {
    /// The guard of `serving`, reading tokens given by variable name through `env`.
    pub fn new(
        serving: &ServingConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, TokenError> {
        Ok(Self {
            tokens: tokens(&serving.auth, env)?,
            metrics_public: serving.metrics_public,
            allowed_origins: serving.allowed_origins.clone(),
            tls: serving.tls_cert.is_some(),
        })
    }

    /// Whether callers must present a token.
    pub fn needs_token(&self) -> bool {
        self.tokens.is_some()
    }

    /// The caller presenting `headers`, if the API knows it.
    fn caller(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        if self.tokens.is_none() {
            return self.identify("");
        }
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.split_once(' ')
                    .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            })
            .map(|(_, token)| token.trim())
            .ok_or_else(|| {
                ApiError::Unauthorized(
                    "this API needs a token: send `Authorization: Bearer <token>`".into(),
                )
            })?;
        self.identify(presented)
    }

    /// The caller presenting the token `presented` (anyone, with every scope, when auth is
    /// off).
    pub fn identify(&self, presented: &str) -> Result<Caller, ApiError> {
        let Some(tokens) = &self.tokens else {
            return Ok(Caller {
                name: None,
                scopes: vec![Scope::Ingest, Scope::Query, Scope::Admin],
            });
        };
        let hash = token_hash(presented);
        // Every configured hash is compared, whichever matches: the time taken says nothing
        // about which token was close.
        let mut found = None;
        for token in tokens {
            if bool::from(token.hash.ct_eq(&hash)) {
                found = Some(token);
            }
        }
        let token = found.ok_or_else(|| ApiError::Unauthorized("unknown token".into()))?;
        Ok(Caller {
            name: Some(token.name.clone()),
            scopes: token.scopes.clone(),
        })
    }

    /// Whether a request with these headers comes from a page of this API or of an allowed
    /// origin (or from no page at all: no `Origin`).
    fn same_origin(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
            return true;
        };
        let origin = origin.trim_end_matches('/');
        if self.allowed_origins.iter().any(|o| o == origin) {
            return true;
        }
        let scheme = if self.tls { "https" } else { "http" };
        headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|host| origin.eq_ignore_ascii_case(&format!("{scheme}://{host}")))
    }
}

fn tokens(
    auth: &AuthConfig,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<Vec<Token>>, TokenError> {
    if auth.mode == AuthMode::None {
        return Ok(None);
    }
    let mut tokens = Vec::with_capacity(auth.tokens.len());
    for token in &auth.tokens {
        let error = |message: String| TokenError {
            name: token.name.clone(),
            message,
        };
        let hash = match (&token.sha256, &token.env) {
            (Some(hex_hash), _) => {
                let mut hash = [0; 32];
                hex::decode_to_slice(hex_hash, &mut hash)
                    .map_err(|e| error(format!("sha256 is not 64 hex digits: {e}")))?;
                hash
            }
            (None, Some(var)) => match env(var) {
                Some(text) if !text.trim().is_empty() => token_hash(text.trim()),
                _ => return Err(error(format!("environment variable `{var}` is not set"))),
            },
            (None, None) => return Err(error("give `sha256` or `env`".into())),
        };
        tokens.push(Token {
            name: token.name.clone(),
            hash,
            scopes: token.scopes.clone(),
        });
    }
    Ok(Some(tokens))
}

/// The scope a request needs, from its path: `None` for the health checks, the dashboard's
/// page and the API document, which anyone may read.
pub fn needs(path: &str, metrics_public: bool) -> Option<Scope> {
    match path {
        "/" | "/healthz" | "/readyz" | "/openapi.json" => None,
        "/metrics" => (!metrics_public).then_some(Scope::Admin),
        p if collects(p) => Some(Scope::Ingest),
        "/v1/views" | "/v1/sql" => Some(Scope::Query),
        p if p.starts_with("/v1/views/") => Some(Scope::Query),
        _ => Some(Scope::Admin),
    }
}

/// Whether `path` is the collector's: `/v1/events` or `/v1/events/{source}`.
fn collects(path: &str) -> bool {
    path == "/v1/events"
        || path
            .strip_prefix("/v1/events/")
            .is_some_and(|source| !source.is_empty() && !source.contains('/'))
}

/// Whether `path` takes a `POST`: a `POST` elsewhere goes on to its 405.
fn writes(path: &str) -> bool {
    collects(path)
        || matches!(path, "/v1/sql" | "/v1/batch/runs")
        || path
            .strip_prefix("/v1/views/")
            .is_some_and(|rest| rest.ends_with("/query"))
}

/// The content types a `POST` to `path` may carry.
fn accepts(path: &str, content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let json = essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|sub| sub.ends_with("+json"));
    json || (collects(path)
        && matches!(
            essence.as_str(),
            "application/x-ndjson"
                | "application/ndjson"
                | "application/jsonlines"
                | "application/x-jsonlines"
        ))
}

/// The middleware: token and scope, then origin and content type on writes.
pub async fn check(
    State(guard): State<Arc<Guard>>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let path = request.uri().path().to_owned();
    let caller = match (
        guard.caller(request.headers()),
        needs(&path, guard.metrics_public),
    ) {
        (Err(refused), Some(_)) => return Err(refused),
        (Ok(caller), Some(scope)) if !caller.may(scope) => {
            return Err(ApiError::forbidden(format!(
                "token `{}` lacks the `{}` scope this route needs",
                caller.name.as_deref().unwrap_or_default(),
                scope.as_str()
            )));
        }
        (caller, _) => caller.ok(),
    };
    if request.method() == Method::POST && writes(&path) {
        let headers = request.headers();
        if !guard.same_origin(headers) {
            return Err(ApiError::Forbidden {
                code: "cross_origin",
                message: "writes are accepted only from this API's own pages or from serving.allowed_origins".into(),
            });
        }
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !accepts(&path, content_type) {
            let expected = if collects(&path) {
                "application/json or application/x-ndjson"
            } else {
                "application/json"
            };
            return Err(ApiError::UnsupportedMediaType(format!(
                "send the body with `Content-Type: {expected}`; got `{content_type}`"
            )));
        }
    }
    if let Some(caller) = caller {
        request.extensions_mut().insert(caller);
    }
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use lambdaflow_common::auth::TokenConfig;

    use super::*;

    #[test]
    fn routes_under_v1_need_admin_unless_listed() {
        assert_eq!(needs("/healthz", false), None);
        assert_eq!(needs("/metrics", false), Some(Scope::Admin));
        assert_eq!(needs("/metrics", true), None);
        assert_eq!(needs("/v1/events", false), Some(Scope::Ingest));
        assert_eq!(needs("/v1/events/shop", false), Some(Scope::Ingest));
        assert_eq!(needs("/v1/events/shop/x", false), Some(Scope::Admin));
        assert_eq!(needs("/v1/views/sales/query", false), Some(Scope::Query));
        assert_eq!(needs("/v1/batch/runs", false), Some(Scope::Admin));
        assert_eq!(needs("/v1/anything-new", false), Some(Scope::Admin));
    }

    #[test]
    fn only_json_and_ndjson_for_events_pass() {
        assert!(accepts("/v1/sql", "application/json; charset=utf-8"));
        assert!(accepts("/v1/sql", "application/problem+json"));
        assert!(!accepts("/v1/sql", "text/plain"));
        assert!(!accepts("/v1/sql", "application/x-www-form-urlencoded"));
        assert!(!accepts("/v1/sql", "application/x-ndjson"));
        assert!(accepts("/v1/events", "application/x-ndjson"));
        assert!(accepts("/v1/events/shop", "application/x-ndjson"));
        assert!(!accepts("/v1/events", ""));
        assert!(writes("/v1/views/sales/query") && writes("/v1/batch/runs"));
        assert!(!writes("/v1/views") && !writes("/v1/lake"));
    }

    #[test]
    fn tokens_are_known_by_hash_or_variable_and_compared_whole() {
        let token = |name: &str, sha256: Option<String>, env: Option<&str>, scopes| TokenConfig {
            name: name.into(),
            sha256,
            env: env.map(str::to_owned),
            scopes,
        };
        let serving = ServingConfig {
            auth: AuthConfig {
                mode: AuthMode::Tokens,
                tokens: vec![
                    token(
                        "reader",
                        Some(hex::encode(token_hash("read-me"))),
                        None,
                        vec![Scope::Query],
                    ),
                    token(
                        "ops",
                        None,
                        Some("OPS_TOKEN"),
                        vec![Scope::Admin, Scope::Ingest],
                    ),
                ],
            },
            ..ServingConfig::default()
        };
        assert!(Guard::new(&serving, |_| None).is_err(), "OPS_TOKEN unset");
        let guard = Guard::new(&serving, |v| (v == "OPS_TOKEN").then(|| "op3".into())).unwrap();
        let with = |auth: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
            guard.caller(&headers)
        };
        let reader = with("Bearer read-me").unwrap();
        assert!(reader.may(Scope::Query) && !reader.may(Scope::Admin));
        assert!(with("bearer op3").unwrap().may(Scope::Admin));
        for wrong in [
            "Bearer read-m",
            "Bearer read-me2",
            "Basic read-me",
            "read-me",
        ] {
            assert!(with(wrong).is_err(), "{wrong}");
        }
        assert!(guard.caller(&HeaderMap::new()).is_err());
    }

    #[test]
    fn writes_from_another_origin_are_refused() {
        let serving = ServingConfig {
            allowed_origins: vec!["https://ops.example".into()],
            ..ServingConfig::default()
        };
        let guard = Guard::new(&serving, |_| None).unwrap();
        let with = |origin: Option<&str>| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
            if let Some(origin) = origin {
                headers.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
            }
            guard.same_origin(&headers)
        };
        assert!(with(None));
        assert!(with(Some("http://127.0.0.1:8080")));
        assert!(with(Some("https://ops.example")));
        assert!(!with(Some("https://evil.example")));
        assert!(!with(Some("null")));
        assert!(!with(Some("http://127.0.0.1:9999")));
    }
}
