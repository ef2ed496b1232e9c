//! coturn's REST-API credentials (`use-auth-secret`): the username is `<expiry>:<user id>` and
//! the password base64(HMAC-SHA1(secret, username)). coturn recomputes the password from the
//! same secret and refuses a username whose expiry has passed, so credentials need no store and
//! cannot be extended by the client (the expiry is inside what is signed).

use std::path::Path;

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha1::Sha1;

/// The secret shared with coturn (`static-auth-secret`).
pub struct TurnSecret(Vec<u8>);

impl TurnSecret {
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        Self(secret.into())
    }

    /// Reads the secret file (one line; surrounding whitespace is not part of it).
    pub fn load(path: &Path) -> std::io::Result<Self> {
        platform::internal::read_secret(path).map(Self)
    }

    /// The username and password for `user_id` that coturn accepts until `expiry` (Unix s).
    pub fn sign(&self, user_id: &str, expiry: u64) -> (String, String) {
        let username = format!("{expiry}:{user_id}");
        // HMAC takes a key of any length.
        let mut mac = Hmac::<Sha1>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(username.as_bytes());
        let password =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        (username, password)
    }
}

/// What `POST /v1/calls/turn-credentials` answers (the shape of an `RTCIceServer`, plus its
/// lifetime).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TurnCredentials {
    /// TURN server URLs, e.g. `turn:host:3478?transport=udp`.
    pub urls: Vec<String>,
    /// `<expiry unix seconds>:<user id>`.
    pub username: String,
    /// base64(HMAC-SHA1(secret, username)).
    pub credential: String,
    /// Seconds the credentials work from now.
    pub ttl: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Computed independently (Python's hmac and base64 modules).
    #[test]
    fn signs_as_coturn_expects() {
        let secret = TurnSecret::new("north-wind");
        let (username, password) =
            secret.sign("0192f2a4-7a1e-7000-8000-000000000001", 1_700_000_000);
        assert_eq!(username, "1700000000:0192f2a4-7a1e-7000-8000-000000000001");
        assert_eq!(password, "cczfCSsFwHR/VPO1AFcDNd56CZc=");
    }
}
