//! Who may call the API: bearer tokens, each with the scopes it grants.
//!
//! A token is configured by the SHA-256 of its text (hex) or by the name of an environment
//! variable that holds the text, so the config file never has to carry a usable secret. The
//! serving layer hashes each presented token once and compares it with every configured hash
//! in constant time; the text itself is never stored or logged.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// `POST /v1/events`.
    Ingest,
    /// Views, view queries, SQL over views.
    Query,
    /// Batch runs, the quarantine, raw and quarantine tables in SQL, the lake, metrics.
    Admin,
}

impl Scope {
    /// The scope's name in the config and in error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingest => "ingest",
            Self::Query => "query",
            Self::Admin => "admin",
        }
    }
}

/// Whether requests need a token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Every request may do everything: for loopback and trusted networks only.
    #[default]
    None,
    /// Every route but the health checks (and, when public, the metrics) needs a token.
    Tokens,
}

/// `[serving.auth]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `"none"` (the default) or `"tokens"`.
    #[serde(default)]
    pub mode: AuthMode,
    /// The tokens accepted when `mode = "tokens"`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<TokenConfig>,
}

/// `[[serving.auth.tokens]]`: one token, known by its hash or by the variable that holds it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// A name for logs and metrics; the token's text never appears there.
    pub name: String,
    /// Lowercase or uppercase hex of the SHA-256 of the token's text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The environment variable holding the token's text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// What the token may do.
    pub scopes: Vec<Scope>,
}

/// The SHA-256 of a token's text.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl AuthConfig {
    /// Checks names, hashes and scopes; `key` is where the section sits (`serving.auth`).
    pub fn check(&self, key: &str) -> Result<()> {
        let invalid = |message: String| {
            Err(Error::Invalid {
                key: key.to_owned(),
                message,
            })
        };
        if self.mode == AuthMode::Tokens && self.tokens.is_empty() {
            return invalid("mode = \"tokens\" needs at least one [[serving.auth.tokens]]".into());
        }
        let mut names = HashSet::new();
        for token in &self.tokens {
            if token.name.is_empty() || !names.insert(&token.name) {
                return invalid(format!(
                    "token names must be present and distinct; `{}` is not",
                    token.name
                ));
            }
            match (&token.sha256, &token.env) {
                (Some(hash), None) => {
                    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return invalid(format!(
                            "token `{}`: sha256 must be 64 hex digits (the SHA-256 of the token, e.g. `printf %s \"$TOKEN\" | sha256sum`)",
                            token.name
                        ));
                    }
                }
                (None, Some(var)) if !var.is_empty() => {}
                _ => {
                    return invalid(format!(
                        "token `{}`: give exactly one of `sha256` and `env`",
                        token.name
                    ));
                }
            }
            if token.scopes.is_empty() {
                return invalid(format!(
                    "token `{}` has no scopes (ingest, query, admin)",
                    token.name
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> AuthConfig {
        toml::from_str(toml).unwrap()
    }

    #[test]
    fn tokens_need_one_well_formed_secret_and_a_scope() {
        let hash = hex::encode(token_hash("s3cret"));
        assert!(
            config(&format!(
                "mode = \"tokens\"\n[[tokens]]\nname = \"a\"\nsha256 = \"{hash}\"\nscopes = [\"query\"]"
            ))
            .check("serving.auth")
            .is_ok()
        );
        let refused = [
            "mode = \"tokens\"".to_owned(),
            "[[tokens]]\nname = \"a\"\nsha256 = \"abc\"\nscopes = [\"query\"]".to_owned(),
            format!("[[tokens]]\nname = \"a\"\nsha256 = \"{hash}\"\nenv = \"T\"\nscopes = [\"query\"]"),
            "[[tokens]]\nname = \"a\"\nenv = \"T\"\nscopes = []".to_owned(),
            "[[tokens]]\nname = \"a\"\nenv = \"T\"\nscopes = [\"ingest\"]\n[[tokens]]\nname = \"a\"\nenv = \"U\"\nscopes = [\"query\"]".to_owned(),
        ];
        for toml in refused {
            assert!(config(&toml).check("serving.auth").is_err(), "{toml}");
        }
        assert!(
            toml::from_str::<AuthConfig>(
                "[[tokens]]\nname = \"a\"\nenv = \"T\"\nscopes = [\"root\"]"
            )
            .is_err()
        );
    }

    #[test]
    fn the_hash_is_the_sha256_of_the_text() {
        assert_eq!(
            hex::encode(token_hash("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
