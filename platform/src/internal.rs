//! Requests one tier makes of another on the platform's own behalf rather than a user's (the
//! signaling tier taking a participant whose sockets all dropped out of a call). They carry
//! `Authorization: Internal <secret>`, a secret file that `deploy/local/up` makes once per
//! stack and gives to the tiers that need it; nginx routes no such path, so only the tiers on
//! the inside reach them.

use std::path::Path;

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;

/// Reads a secret file: one line, surrounding whitespace not part of it, never empty.
pub fn read_secret(path: &Path) -> std::io::Result<Vec<u8>> {
    let text = std::fs::read_to_string(path)?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is empty", path.display()),
        ));
    }
    Ok(secret.as_bytes().to_vec())
}

#[derive(Clone)]
pub struct InternalSecret(Vec<u8>);

impl InternalSecret {
    pub fn load(path: &Path) -> std::io::Result<Self> {
        read_secret(path).map(Self)
    }

    /// The `Authorization` header value of an internal request.
    pub fn header_value(&self) -> String {
        format!("Internal {}", String::from_utf8_lossy(&self.0))
    }

    /// Whether `headers` carry this secret (compared in constant time).
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(given) = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Internal "))
        else {
            return false;
        };
        given.len() == self.0.len()
            && given
                .iter()
                .zip(&self.0)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_secret_is_admitted() {
        let secret = InternalSecret(b"s3cret".to_vec());
        let with = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, value.parse().unwrap());
            h
        };
        assert!(secret.admits(&with(&secret.header_value())));
        for wrong in [
            "Internal s3cre",
            "Internal s3cret!",
            "Bearer s3cret",
            "s3cret",
            "Internal ",
        ] {
            assert!(!secret.admits(&with(wrong)), "{wrong}");
        }
        assert!(!secret.admits(&HeaderMap::new()));
    }
}
