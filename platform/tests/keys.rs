//! Retiring a signing key: once the key set no longer lists it, tokens it signed stop
//! verifying at once, including tokens the verifier had verified and remembered. Against the
//! real Redis of the test stack (revocation marks), with keys made by openssl.

use std::process::Command;

use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use platform::auth::{AUDIENCE, AccessClaims, AuthError, ISSUER, TokenVerifier};

struct Key {
    encoding: EncodingKey,
    jwk: Jwk,
    kid: String,
}

fn key() -> anyhow::Result<Key> {
    let pem = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()?;
    anyhow::ensure!(pem.status.success(), "openssl genpkey failed");
    let encoding = EncodingKey::from_rsa_pem(&pem.stdout)?;
    let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::RS256)?;
    let kid = jwk.thumbprint(ThumbprintHash::SHA256);
    jwk.common.key_id = Some(kid.clone());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    Ok(Key { encoding, jwk, kid })
}

fn token(key: &Key) -> anyhow::Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let claims = AccessClaims {
        sub: uuid::Uuid::now_v7().to_string(),
        sid: uuid::Uuid::now_v7().to_string(),
        name: "keys".into(),
        iat: now,
        exp: now + 600,
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
    };
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(key.kid.clone());
    Ok(jsonwebtoken::encode(&header, &claims, &key.encoding)?)
}

#[tokio::test]
async fn a_retired_key_stops_verifying_its_tokens_at_once() -> anyhow::Result<()> {
    let url = std::env::var("CHAT_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let mut redis = platform::cache::connect(&url).await?;
    let prefix = format!("keys-{}:", uuid::Uuid::now_v7());
    let sentinel = platform::auth::revocations_kept_key(&prefix);
    let _: () = redis::cmd("SET")
        .arg(&sentinel)
        .arg(1)
        .arg("EX")
        .arg(60)
        .query_async(&mut redis)
        .await?;
    let (old, new) = (key()?, key()?);
    let both = JwkSet {
        keys: vec![old.jwk.clone(), new.jwk.clone()],
    };
    let verifier = TokenVerifier::new(&both, None, redis.clone(), &prefix)?;
    let (signed_old, signed_new) = (token(&old)?, token(&new)?);
    verifier.verify(&signed_old).await?;
    verifier.verify(&signed_new).await?;

    verifier.set_keys(&JwkSet {
        keys: vec![new.jwk.clone()],
    })?;
    assert!(matches!(
        verifier.verify(&signed_old).await,
        Err(AuthError::UnknownKey)
    ));
    verifier.verify(&signed_new).await?;
    let _: () = redis::cmd("DEL")
        .arg(&sentinel)
        .query_async(&mut redis)
        .await?;
    Ok(())
}
