//! Access-token verification, the same in every tier.
//!
//! Access tokens are short-lived RS256 JWTs signed by the commands tier, which publishes its
//! public keys as a JWK set (`GET /v1/auth/jwks`). A verifier only accepts RS256 with a `kid`
//! it knows, so `alg: none`, HMAC tokens "signed" with the public key and tokens from unknown
//! keys all fail the same way. Because a JWT cannot be recalled, logout and refresh-token reuse
//! also mark the session revoked in Redis for the token lifetime, and every verification checks
//! that mark: a logged-out token stops working at once in every tier.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use crate::ApiError;

/// `iss` and `aud` of every access token.
pub const ISSUER: &str = "chat-platform";
pub const AUDIENCE: &str = "chat-platform";

/// Claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// User id.
    pub sub: String,
    /// Session (refresh-token family) id; revoking it kills every token of the session.
    pub sid: String,
    /// Username at issue time, so tiers can show names without a lookup.
    pub name: String,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
    pub aud: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("token expired")]
    Expired,
    #[error("token signed by an unknown key")]
    UnknownKey,
    #[error("invalid token")]
    Invalid,
    #[error("session revoked")]
    Revoked,
    #[error("cannot verify tokens right now: {0}")]
    Unavailable(String),
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let code = match e {
            AuthError::Missing => "missing_token",
            AuthError::Expired => "token_expired",
            AuthError::Revoked => "session_revoked",
            AuthError::Unavailable(_) => {
                return ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "auth_unavailable",
                    e.to_string(),
                )
                .with_retry_after(1);
            }
            AuthError::Malformed | AuthError::UnknownKey | AuthError::Invalid => "invalid_token",
        };
        ApiError::new(StatusCode::UNAUTHORIZED, code, e.to_string())
    }
}

/// The caller of a request, verified: an axum extractor, so a handler that takes it cannot run
/// for an anonymous, expired or revoked token, and no handler calls the verifier itself.
/// Rejects with the API's 401 (or 503 `auth_unavailable` when revocations cannot be checked).
#[derive(Debug, Clone)]
pub struct Caller(pub AccessClaims);

/// App states that can verify tokens (the extractor's only need from a tier's state).
pub trait VerifiesTokens {
    fn verifier(&self) -> &TokenVerifier;
}

impl<T: VerifiesTokens> VerifiesTokens for std::sync::Arc<T> {
    fn verifier(&self) -> &TokenVerifier {
        (**self).verifier()
    }
}

impl<S> axum::extract::FromRequestParts<S> for Caller
where
    S: VerifiesTokens + Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Caller(
            state.verifier().verify_headers(&parts.headers).await?,
        ))
    }
}

/// Redis key marking a revoked session; its TTL outlives the last access token of the session.
pub fn revoked_session_key(prefix: &str, sid: &str) -> String {
    format!("{prefix}revoked_session:{sid}")
}

/// Redis key the commands tier's revocation keeper sets once every mark still needed is in
/// Redis. Its absence means Redis lost its data (or was never filled): no mark can be trusted
/// to be missing, so tokens are refused as `Unavailable` until it is back.
pub fn revocations_kept_key(prefix: &str) -> String {
    format!("{prefix}revocations_kept")
}

/// Tokens whose signature was already checked, up to this many (then the cache starts over).
const VERIFIED_CACHE_ENTRIES: usize = 20_000;

/// Verifies access tokens against a JWK set, refreshed from `jwks_url` when a token names a
/// key the verifier has not seen (key rotation), at most once every 10 s.
///
/// A client sends the same token with every request until it expires, and an RS256
/// verification is the most expensive thing a request does (it was 40% of the write path's CPU
/// in the commands benchmark), so tokens that verified are remembered until they expire. Only
/// the signature check is skipped on a hit: expiry and the revocation mark are checked on every
/// request.
pub struct TokenVerifier {
    verified: std::sync::Mutex<HashMap<String, AccessClaims>>,
    keys: RwLock<HashMap<String, DecodingKey>>,
    jwks_url: Option<String>,
    last_refresh: tokio::sync::Mutex<Option<Instant>>,
    http: reqwest::Client,
    validation: Validation,
    redis: ConnectionManager,
    redis_prefix: String,
}

impl TokenVerifier {
    /// A verifier that knows `jwks` and, when given, refetches from `jwks_url` on unknown keys.
    pub fn new(
        jwks: &JwkSet,
        jwks_url: Option<String>,
        redis: ConnectionManager,
        redis_prefix: impl Into<String>,
    ) -> Result<Self, AuthError> {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.algorithms = vec![Algorithm::RS256];
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iat", "sub", "iss", "aud"]);
        validation.leeway = 5;
        Ok(Self {
            verified: std::sync::Mutex::new(HashMap::new()),
            keys: RwLock::new(decoding_keys(jwks)?),
            jwks_url,
            last_refresh: tokio::sync::Mutex::new(None),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .map_err(|e| AuthError::Unavailable(e.to_string()))?,
            validation,
            redis,
            redis_prefix: redis_prefix.into(),
        })
    }

    /// Fetches the JWK set from `jwks_url` (the commands tier) and builds a verifier.
    pub async fn from_url(
        jwks_url: &str,
        redis: ConnectionManager,
        redis_prefix: impl Into<String>,
    ) -> Result<Self, AuthError> {
        let jwks = fetch_jwks(&reqwest::Client::new(), jwks_url).await?;
        Self::new(&jwks, Some(jwks_url.to_string()), redis, redis_prefix)
    }

    /// [`TokenVerifier::from_url`], retried for up to a minute: the commands tier publishes the
    /// keys, and a joint start must not fail because it came up second.
    pub async fn from_url_when_up(
        jwks_url: &str,
        redis: ConnectionManager,
        redis_prefix: &str,
    ) -> Result<Self, AuthError> {
        use backon::Retryable;
        // About a minute and a half: the commands tier publishes the keys when it is up.
        (|| Self::from_url(jwks_url, redis.clone(), redis_prefix))
            .retry(crate::retry::policy().with_max_times(20))
            .sleep(tokio::time::sleep)
            .notify(|e: &AuthError, wait| crate::retry::note("jwks", e, wait))
            .await
    }

    /// Verifies the `Authorization: Bearer` token of a request.
    pub async fn verify_headers(&self, headers: &HeaderMap) -> Result<AccessClaims, AuthError> {
        let token = bearer(headers).ok_or(AuthError::Missing)?;
        self.verify(token).await
    }

    pub async fn verify(&self, token: &str) -> Result<AccessClaims, AuthError> {
        let claims = match self.cached(token) {
            Some(claims) => claims,
            None => {
                let claims = self.verify_signature(token).await?;
                if let Ok(mut verified) = self.verified.lock() {
                    if verified.len() >= VERIFIED_CACHE_ENTRIES {
                        verified.clear();
                    }
                    verified.insert(token.to_string(), claims.clone());
                }
                claims
            }
        };
        let mut redis = self.redis.clone();
        let (revoked, kept): (Option<String>, Option<String>) = redis::cmd("MGET")
            .arg(revoked_session_key(&self.redis_prefix, &claims.sid))
            .arg(revocations_kept_key(&self.redis_prefix))
            .query_async(&mut redis)
            .await
            .map_err(|e| AuthError::Unavailable(format!("redis: {e}")))?;
        if revoked.is_some() {
            return Err(AuthError::Revoked);
        }
        if kept.is_none() {
            return Err(AuthError::Unavailable(
                "session revocations are being restored".into(),
            ));
        }
        Ok(claims)
    }

    /// Claims of a token verified before and not expired since.
    fn cached(&self, token: &str) -> Option<AccessClaims> {
        let mut verified = self.verified.lock().ok()?;
        let claims = verified.get(token)?.clone();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(i64::MAX);
        if claims.exp <= now {
            verified.remove(token);
            return None;
        }
        Some(claims)
    }

    async fn verify_signature(&self, token: &str) -> Result<AccessClaims, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        if header.alg != Algorithm::RS256 {
            return Err(AuthError::Invalid);
        }
        let kid = header.kid.ok_or(AuthError::UnknownKey)?;
        match self.decode(token, &kid)? {
            Some(claims) => Ok(claims),
            None => {
                self.refresh().await?;
                self.decode(token, &kid)?.ok_or(AuthError::UnknownKey)
            }
        }
    }

    /// `Ok(None)` when the key is unknown.
    fn decode(&self, token: &str, kid: &str) -> Result<Option<AccessClaims>, AuthError> {
        let keys = self
            .keys
            .read()
            .map_err(|_| AuthError::Unavailable("key cache poisoned".into()))?;
        let Some(key) = keys.get(kid) else {
            return Ok(None);
        };
        match jsonwebtoken::decode::<AccessClaims>(token, key, &self.validation) {
            Ok(data) => Ok(Some(data.claims)),
            Err(e) => Err(match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                jsonwebtoken::errors::ErrorKind::InvalidToken
                | jsonwebtoken::errors::ErrorKind::Base64(_)
                | jsonwebtoken::errors::ErrorKind::Json(_)
                | jsonwebtoken::errors::ErrorKind::Utf8(_) => AuthError::Malformed,
                _ => AuthError::Invalid,
            }),
        }
    }

    async fn refresh(&self) -> Result<(), AuthError> {
        let Some(url) = &self.jwks_url else {
            return Ok(());
        };
        let mut last = self.last_refresh.lock().await;
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(10)) {
            return Ok(());
        }
        *last = Some(Instant::now());
        let jwks = fetch_jwks(&self.http, url).await?;
        self.set_keys(&jwks)
    }

    /// Makes `jwks` the whole set of keys tokens may be signed with. A key the set no longer
    /// lists is retired: tokens it signed stop verifying at once, those already verified and
    /// remembered included.
    pub fn set_keys(&self, jwks: &JwkSet) -> Result<(), AuthError> {
        let fresh = decoding_keys(jwks)?;
        let mut keys = self
            .keys
            .write()
            .map_err(|_| AuthError::Unavailable("key cache poisoned".into()))?;
        let retired: Vec<String> = keys
            .keys()
            .filter(|kid| !fresh.contains_key(*kid))
            .cloned()
            .collect();
        *keys = fresh;
        drop(keys);
        if !retired.is_empty() {
            tracing::info!(?retired, "signing keys retired");
            if let Ok(mut verified) = self.verified.lock() {
                verified.clear();
            }
        }
        Ok(())
    }

    /// Fetches the key set every `period` until `stop`, so keys the commands tier retired stop
    /// verifying within that period (new keys are fetched on first sight anyway).
    pub async fn keep_keys_fresh(
        &self,
        period: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "cannot refresh the signing keys; keeping the known ones");
            }
        }
    }
}

async fn fetch_jwks(http: &reqwest::Client, url: &str) -> Result<JwkSet, AuthError> {
    http.get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| AuthError::Unavailable(format!("fetching {url}: {e}")))?
        .json::<JwkSet>()
        .await
        .map_err(|e| AuthError::Unavailable(format!("JWK set at {url}: {e}")))
}

fn decoding_keys(jwks: &JwkSet) -> Result<HashMap<String, DecodingKey>, AuthError> {
    let mut keys = HashMap::new();
    for jwk in &jwks.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|e| AuthError::Unavailable(format!("JWK {kid}: {e}")))?;
        keys.insert(kid, key);
    }
    Ok(keys)
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}
