//! Access tokens (RS256 JWTs with a `kid`) and refresh tokens (opaque random strings whose
//! SHA-256 is all the database keeps).

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use platform::auth::{AUDIENCE, AccessClaims, ISSUER};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::error::CommandError;

pub struct Signer {
    key: EncodingKey,
    kid: String,
    jwks: JwkSet,
    access_ttl: Duration,
}

impl Signer {
    /// Loads the RSA private key. The `kid` is the key's RFC 7638 thumbprint, so every instance
    /// loading the same key publishes the same id without configuration.
    pub fn load(path: &Path, access_ttl: Duration) -> Result<Self, CommandError> {
        let pem = std::fs::read(path).map_err(|e| {
            CommandError::Internal(format!(
                "cannot read the JWT signing key {}: {e}",
                path.display()
            ))
        })?;
        Self::from_pem(&pem, access_ttl)
    }

    pub fn from_pem(pem: &[u8], access_ttl: Duration) -> Result<Self, CommandError> {
        let key = EncodingKey::from_rsa_pem(pem).map_err(|e| {
            CommandError::Internal(format!("JWT signing key is not an RSA private key: {e}"))
        })?;
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::RS256)
            .map_err(|e| CommandError::Internal(format!("cannot derive the public JWK: {e}")))?;
        let kid = jwk.thumbprint(ThumbprintHash::SHA256);
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        Ok(Self {
            key,
            kid,
            jwks: JwkSet { keys: vec![jwk] },
            access_ttl,
        })
    }

    pub fn jwks(&self) -> &JwkSet {
        &self.jwks
    }

    pub fn access_ttl(&self) -> Duration {
        self.access_ttl
    }

    pub fn issue(
        &self,
        user_id: &str,
        session_id: &str,
        username: &str,
    ) -> Result<String, CommandError> {
        let now = now_secs();
        let claims = AccessClaims {
            sub: user_id.to_string(),
            sid: session_id.to_string(),
            name: username.to_string(),
            iat: now,
            exp: now + self.access_ttl.as_secs() as i64,
            iss: ISSUER.to_string(),
            aud: AUDIENCE.to_string(),
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| CommandError::Internal(e.to_string()))
    }
}

/// A new refresh token (256 random bits) and the hash to store.
pub fn new_refresh_token() -> (String, Vec<u8>) {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let hash = hash_refresh_token(&token);
    (token, hash)
}

pub fn hash_refresh_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
