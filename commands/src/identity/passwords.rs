//! argon2id password hashing, off the async runtime and bounded, so a burst of logins cannot
//! starve request handling or exhaust memory (each hash takes `m` KiB).

use std::sync::Arc;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::oneshot;

use crate::error::CommandError;

type Job = Box<dyn FnOnce() + Send>;

/// The threads that run argon2, and only argon2. Each hash takes `m` KiB (19 MiB) of memory,
/// and glibc keeps what a thread freed in that thread's arena: hashed on tokio's shared
/// blocking pool, whose threads multiply with the room writers' commits, every one of them
/// ended up holding a hash's worth (commands measured 1.5 GB resident after a benchmark's 1,500
/// registrations, 36 MB before them). A fixed few threads bound that to a few hashes' worth.
#[derive(Clone)]
struct Workers {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl Workers {
    fn start(threads: usize) -> Result<Self, CommandError> {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let queue = Arc::new(std::sync::Mutex::new(queue));
        for n in 0..threads.max(1) {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{n}"))
                .spawn(move || {
                    loop {
                        let job = match queue.lock() {
                            Ok(q) => q.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                })
                .map_err(|e| CommandError::Internal(format!("cannot start argon2 threads: {e}")))?;
        }
        Ok(Self { jobs })
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, CommandError> {
        let (done, result) = oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = done.send(work());
            }))
            .map_err(|_| CommandError::Internal("argon2 threads are gone".into()))?;
        result
            .await
            .map_err(|_| CommandError::Internal("argon2 job dropped".into()))
    }
}

#[derive(Clone)]
pub struct Passwords {
    params: Params,
    workers: Workers,
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
            workers: Workers::start(parallel_hashes)?,
            decoy: Arc::new(decoy),
        })
    }

    fn argon(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    pub async fn hash(&self, password: String) -> Result<String, CommandError> {
        let argon = self.argon();
        self.workers
            .run(move || {
                argon
                    .hash_password(password.as_bytes(), &SaltString::generate(&mut OsRng))
                    .map(|h| h.to_string())
                    .map_err(|e| CommandError::Internal(e.to_string()))
            })
            .await?
    }

    /// Verifies `password` against `hash`, or against the decoy when there is no account.
    pub async fn verify(
        &self,
        password: String,
        hash: Option<String>,
    ) -> Result<bool, CommandError> {
        let exists = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.decoy.as_ref().clone());
        let argon = self.argon();
        let matches = self
            .workers
            .run(move || {
                PasswordHash::new(&hash)
                    .map(|parsed| argon.verify_password(password.as_bytes(), &parsed).is_ok())
                    .map_err(|e| CommandError::Internal(format!("stored hash unreadable: {e}")))
            })
            .await??;
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
