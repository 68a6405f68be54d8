//! Query strings. axum's `Query` cannot take a repeated `path=` (the spec's `explode: true`
//! arrays) and rejects in plain text, so the few parameters these endpoints take are read here.

use crate::error::ApiError;

/// The decoded `key=value` pairs of a query string, in order.
#[derive(Debug, Default)]
pub(super) struct Params(Vec<(String, String)>);

impl Params {
    pub(super) fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let mut pairs = Vec::new();
        for part in raw.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            pairs.push((decode(k)?, decode(v)?));
        }
        Ok(Self(pairs))
    }

    /// Every value of `key`.
    pub(super) fn all(&self, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The first value of `key`.
    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of a required `key`.
    pub(super) fn required(&self, key: &str) -> Result<&str, ApiError> {
        self.get(key)
            .ok_or_else(|| ApiError::bad_request(format!("missing query parameter '{key}'")))
    }

    /// Every value of a required, repeatable `key` (at least one).
    pub(super) fn required_all(&self, key: &str) -> Result<Vec<&str>, ApiError> {
        let values = self.all(key);
        if values.is_empty() {
            return Err(ApiError::bad_request(format!(
                "missing query parameter '{key}'"
            )));
        }
        Ok(values)
    }

    /// A boolean flag: `true`/`1` or `false`/`0`; absent means `false`.
    pub(super) fn flag(&self, key: &str) -> Result<bool, ApiError> {
        match self.get(key) {
            None | Some("false" | "0" | "") => Ok(false),
            Some("true" | "1") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!(
                "query parameter '{key}' must be true or false, not '{other}'"
            ))),
        }
    }
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte.
fn decode(s: &str) -> Result<String, ApiError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| ApiError::bad_request("malformed percent-encoding in query"))?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| ApiError::bad_request("query parameters must be UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_keys_and_escapes_are_decoded() {
        let p = Params::parse(Some("path=%2Fa%20b&path=c+d&depth=2&x")).expect("parses");
        assert_eq!(p.all("path"), vec!["/a b", "c d"]);
        assert_eq!(p.get("depth"), Some("2"));
        assert_eq!(p.get("x"), Some(""));
        assert!(p.required("nope").is_err());
    }

    #[test]
    fn bad_escapes_are_rejected() {
        assert!(Params::parse(Some("path=%zz")).is_err());
        assert!(Params::parse(Some("path=%4")).is_err());
        assert!(Params::parse(Some("path=%ff")).is_err());
    }
}
