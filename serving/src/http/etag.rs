//! Conditional GETs for the routes a dashboard polls whose answers cost a table scan or many
//! reads but whose state has a cheap version: the quarantine listing (the quarantine table's
//! Delta version, one listing of its log) and the run list (a listing of the run records).
//! The answer carries an `ETag`; a request presenting it in `If-None-Match` gets 304 and no
//! body, so an open dashboard tab costs a listing per poll while nothing changes. Browsers
//! revalidate on their own (`Cache-Control: no-cache`), so the page's code knows none of it.

use std::hash::{DefaultHasher, Hash, Hasher};

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// A weak entity tag: equal for answers that are equal in meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ETag(String);

impl ETag {
    /// The tag of an answer determined by `state`.
    pub fn of(state: impl Hash) -> Self {
        let mut hasher = DefaultHasher::new();
        state.hash(&mut hasher);
        Self(format!("W/\"{:016x}\"", hasher.finish()))
    }

    /// Whether the request's `If-None-Match` names this tag (or `*`), compared weakly.
    pub fn matches(&self, headers: &HeaderMap) -> bool {
        let strong = self.0.trim_start_matches("W/");
        headers
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|tag| tag.trim())
            .any(|tag| tag == "*" || tag.trim_start_matches("W/") == strong)
    }

    /// 304 Not Modified, with this tag.
    pub fn not_modified(self) -> Response {
        self.on(StatusCode::NOT_MODIFIED.into_response())
    }

    /// `response` with this tag, to be revalidated before every reuse.
    pub fn on(self, mut response: Response) -> Response {
        let headers = response.headers_mut();
        if let Ok(value) = HeaderValue::from_str(&self.0) {
            headers.insert(header::ETAG, value);
        }
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asking(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn a_tag_matches_itself_weakly_in_a_list_and_star() {
        let tag = ETag::of(("quarantine", 7u64, 20usize));
        assert_eq!(tag, ETag::of(("quarantine", 7u64, 20usize)));
        assert_ne!(tag, ETag::of(("quarantine", 8u64, 20usize)));
        let strong = tag.0.trim_start_matches("W/").to_owned();
        assert!(tag.matches(&asking(&tag.0)));
        assert!(tag.matches(&asking(&strong)));
        assert!(tag.matches(&asking(&format!("\"other\", {}", tag.0))));
        assert!(tag.matches(&asking("*")));
        assert!(!tag.matches(&asking("W/\"other\"")));
        assert!(!tag.matches(&HeaderMap::new()));
    }
}
