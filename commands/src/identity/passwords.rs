//! argon2id password hashing, off the async runtime and bounded, so a burst of logins cannot
//! starve request handling or exhaust memory (each hash takes `m` KiB).

use std::sync::Arc;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

use crate::error::CommandError;

#[derive(Clone)]
pub struct Passwords {
    params: Params,
    permits: Arc<Semaphore>,
    /// Hash verified when the account does not exist, so a login for an unknown user takes as
    /// long as one with a wrong password and does not reveal which accounts exist.
    decoy: Arc<String>,
}

impl Passwords {
    /// argon2id with `m_kib` memory, t=2, p=1 (OWASP: m=19 MiB, t=2, p=1 minimum).
    pub fn new(m_kib: u32, parallel_hashes: usize) -> Result<Self, CommandError> {
        let params =
            Params::new(m_kib, 2, 1, None).map_err(|e| CommandError::Internal(e.to_string()))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
        let decoy = argon
            .hash_password(
                b"decoy-password-never-valid",
                &SaltString::generate(&mut OsRng),
            )
            .map_err(|e| CommandError::Internal(e.to_string()))?
            .to_string();
        Ok(Self {
            params,
            permits: Arc::new(Semaphore::new(parallel_hashes.max(1))),
            decoy: Arc::new(decoy),
        })
    }

    fn argon(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    pub async fn hash(&self, password: String) -> Result<String, CommandError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| CommandError::Internal(e.to_string()))?;
        let argon = self.argon();
        tokio::task::spawn_blocking(move || {
            argon
                .hash_password(password.as_bytes(), &SaltString::generate(&mut OsRng))
                .map(|h| h.to_string())
                .map_err(|e| CommandError::Internal(e.to_string()))
        })
        .await
        .map_err(|e| CommandError::Internal(e.to_string()))?
    }

    /// Verifies `password` against `hash`, or against the decoy when there is no account.
    pub async fn verify(
        &self,
        password: String,
        hash: Option<String>,
    ) -> Result<bool, CommandError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| CommandError::Internal(e.to_string()))?;
        let exists = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.decoy.as_ref().clone());
        let argon = self.argon();
        let matches = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .map(|parsed| argon.verify_password(password.as_bytes(), &parsed).is_ok())
                .map_err(|e| CommandError::Internal(format!("stored hash unreadable: {e}")))
        })
        .await
        .map_err(|e| CommandError::Internal(e.to_string()))??;
        Ok(exists && matches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_argon2id_with_the_configured_cost_and_verify() {
        let passwords = Passwords::new(19_456, 2).unwrap();
        let hash = passwords.hash("correct horse".into()).await.unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(
            passwords
                .verify("correct horse".into(), Some(hash.clone()))
                .await
                .unwrap()
        );
        assert!(
            !passwords
                .verify("wrong horse".into(), Some(hash))
                .await
                .unwrap()
        );
        assert!(!passwords.verify("anything".into(), None).await.unwrap());
    }
}
