//! A workspace binary started by a test, with its own settings, killed when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

pub struct Service {
    name: String,
    child: Option<Child>,
    binary: PathBuf,
    env: Vec<(String, String)>,
    log: tempfile::NamedTempFile,
}

impl Service {
    /// Starts `binary` (a name in [`crate::bin_dir`]) with `env` added to the environment.
    pub fn spawn(binary: &str, env: Vec<(String, String)>) -> anyhow::Result<Self> {
        Self::spawn_path(crate::bin_dir().join(binary), env)
    }

    /// Starts the executable at `binary` (for programs that are not tests, whose own
    /// executable does not sit in `deps/`).
    pub fn spawn_path(binary: PathBuf, env: Vec<(String, String)>) -> anyhow::Result<Self> {
        let mut service = Self {
            name: binary
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            child: None,
            binary,
            env,
            log: tempfile::NamedTempFile::new()?,
        };
        service.start()?;
        Ok(service)
    }

    /// Starts it again (after [`Service::kill9`] or [`Service::terminate`]) with the same settings.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let log = self.log.reopen()?;
        let mut command = Command::new(&self.binary);
        command
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.child = Some(
            command
                .spawn()
                .with_context(|| format!("starting {}", self.binary.display()))?,
        );
        Ok(())
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// SIGKILL: no chance to flush, hand over or clean up.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM, waiting up to 40 s for a clean exit.
    pub fn terminate(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            crate::signal_only(child.id() as i32, "TERM")?;
            let deadline = std::time::Instant::now() + Duration::from_secs(40);
            loop {
                if child.try_wait()?.is_some() {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    child.kill()?;
                    child.wait()?;
                    anyhow::bail!("{} ignored SIGTERM for 40 s", self.name);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// Waits until `url` answers 2xx (its `/readyz`, say); the error carries the service's log.
    pub async fn wait_ready(&self, url: &str, timeout: Duration) -> anyhow::Result<()> {
        crate::wait_for(&format!("{} ready", self.name), timeout, || async move {
            reqwest::get(url)
                .await
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ())
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", self.output()))
    }

    /// What the service printed, for failure messages.
    pub fn output(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
