//! Masking: the clear value of a masked field never reaches the lake.
//!
//! Clean events are masked column by column in [`crate::validate`]. Quarantined payloads are
//! kept as received, except that masked fields are replaced by their hash there too: in the
//! parsed object when the payload is a JSON object, and by a byte-level scan for
//! `"field": value` otherwise, so that a broken event cannot leak what a good one would hide.

use std::borrow::Cow;

use sha2::{Digest, Sha256};

use crate::source::{Normalize, SourceConfig};

/// Lowercase hex SHA-256 of `value`, written into `out`.
pub fn sha256_hex<'a>(value: &[u8], out: &'a mut [u8; 64]) -> &'a str {
    let digest = Sha256::digest(value);
    hex::encode_to_slice(digest, out).expect("64 hex digits fit 32 bytes");
    std::str::from_utf8(out).expect("hex is ASCII")
}

/// Applies a normalisation, borrowing when nothing changes. `lower` and `upper` also trim, as
/// nobody means " kr" when they ask for upper-case country codes.
pub fn normalize<'a>(value: &'a str, how: Option<Normalize>) -> Cow<'a, str> {
    let Some(how) = how else {
        return Cow::Borrowed(value);
    };
    let value = value.trim();
    match how {
        Normalize::Trim => Cow::Borrowed(value),
        Normalize::Lower if !value.chars().any(char::is_uppercase) => Cow::Borrowed(value),
        Normalize::Lower => Cow::Owned(value.to_lowercase()),
        Normalize::Upper if !value.chars().any(char::is_lowercase) => Cow::Borrowed(value),
        Normalize::Upper => Cow::Owned(value.to_uppercase()),
    }
}

/// The masked fields of a source with their normalisation, for masking quarantined payloads.
#[derive(Debug, Clone, Default)]
pub struct PayloadMasker {
    fields: Vec<(String, Option<Normalize>)>,
}

impl PayloadMasker {
    /// Collects the masked fields of `source`.
    pub fn new(source: &SourceConfig) -> Self {
        let fields = source
            .fields
            .iter()
            .filter(|f| f.mask.is_some())
            .map(|f| (f.name.clone(), f.normalize))
            .collect();
        Self { fields }
    }

    /// `payload` with every masked field's value replaced by its hash.
    pub fn mask<'a>(&self, payload: &'a [u8]) -> Cow<'a, [u8]> {
        if self.fields.is_empty() {
            return Cow::Borrowed(payload);
        }
        match serde_json::from_slice::<serde_json::Value>(payload) {
            Ok(serde_json::Value::Object(mut object)) => {
                let mut changed = false;
                for (name, how) in &self.fields {
                    if let Some(value) = object.get_mut(name) {
                        let clear = match &*value {
                            serde_json::Value::Null => continue,
                            serde_json::Value::String(s) => normalize(s, *how).into_owned(),
                            other => other.to_string(),
                        };
                        *value = serde_json::Value::String(hash_string(clear.as_bytes()));
                        changed = true;
                    }
                }
                if changed {
                    Cow::Owned(serde_json::to_vec(&object).expect("a JSON object serialises"))
                } else {
                    Cow::Borrowed(payload)
                }
            }
            _ => self.scrub(payload),
        }
    }

    /// Byte-level masking for payloads that are not a JSON object.
    fn scrub<'a>(&self, payload: &'a [u8]) -> Cow<'a, [u8]> {
        let mut out: Cow<'a, [u8]> = Cow::Borrowed(payload);
        for (name, _) in &self.fields {
            let key = format!("\"{name}\"");
            let mut from = 0;
            while let Some(found) = find(&out[from..], key.as_bytes()) {
                let after_key = from + found + key.len();
                let Some((start, end)) = value_span(&out, after_key) else {
                    from = after_key;
                    continue;
                };
                let hashed = format!("\"{}\"", hash_string(&out[start..end]));
                let mut next = Vec::with_capacity(out.len() + hashed.len());
                next.extend_from_slice(&out[..start]);
                next.extend_from_slice(hashed.as_bytes());
                next.extend_from_slice(&out[end..]);
                from = start + hashed.len();
                out = Cow::Owned(next);
            }
        }
        out
    }
}

fn hash_string(value: &[u8]) -> String {
    let mut buf = [0u8; 64];
    sha256_hex(value, &mut buf).to_owned()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// After a key: white space, a colon, white space, then a quoted string (to its closing quote
/// or the end) or a bare token (to the next `,`, `}` or white space). Returns the value's span,
/// quotes included.
fn value_span(bytes: &[u8], mut i: usize) -> Option<(usize, usize)> {
    let skip_ws = |mut i: usize| {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    i = skip_ws(i);
    if bytes.get(i) != Some(&b':') {
        return None;
    }
    let start = skip_ws(i + 1);
    let mut end = start;
    if bytes.get(start) == Some(&b'"') {
        end += 1;
        while end < bytes.len() {
            match bytes[end] {
                b'\\' => end += 2,
                b'"' => {
                    end += 1;
                    break;
                }
                _ => end += 1,
            }
        }
    } else {
        while end < bytes.len()
            && !matches!(bytes[end], b',' | b'}' | b']')
            && !bytes[end].is_ascii_whitespace()
        {
            end += 1;
        }
    }
    let end = end.min(bytes.len());
    (end > start).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn masker() -> PayloadMasker {
        PayloadMasker::new(Config::shop().source())
    }

    #[test]
    fn sha256_is_lowercase_hex() {
        let mut buf = [0u8; 64];
        assert_eq!(
            sha256_hex(b"abc", &mut buf),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn json_objects_are_masked_after_normalising() {
        let out = masker().mask(br#"{"email":"Ann@Example.com","country":7}"#);
        let text = std::str::from_utf8(&out).unwrap();
        assert!(!text.contains("Example"), "{text}");
        assert!(text.contains(&hash_string(b"ann@example.com")), "{text}");
    }

    #[test]
    fn broken_payloads_are_scrubbed() {
        for payload in [
            &br#"{"email": "ann@example.com", "x": "#[..],
            &br#"["email":"ann@example.com"]"#[..],
            &br#"{"email" :"ann@exa\"mple.com"#[..],
            &b"{\"email\":\"ann@example.com\xff\"}"[..],
        ] {
            let out = masker().mask(payload);
            assert!(
                find(&out, b"ann@exa").is_none(),
                "{}",
                String::from_utf8_lossy(&out)
            );
        }
    }

    #[test]
    fn payloads_without_masked_fields_are_kept_byte_for_byte() {
        let payload = br#"{ "country" : "kr" }"#;
        assert!(matches!(masker().mask(payload), Cow::Borrowed(p) if p == payload));
    }

    #[test]
    fn normalisation_borrows_when_nothing_changes() {
        assert!(matches!(
            normalize("KR", Some(Normalize::Upper)),
            Cow::Borrowed("KR")
        ));
        assert_eq!(normalize("kr", Some(Normalize::Upper)), "KR");
        assert_eq!(normalize(" a ", Some(Normalize::Trim)), "a");
        assert_eq!(normalize("ÄB", Some(Normalize::Lower)), "äb");
    }
}
