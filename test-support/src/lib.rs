//! Helpers shared by the integration tests. Tests talk to the real services that
//! `deploy/local/up` starts; these helpers find them, keep tests from stepping on each other
//! (unique names), bound every wait, and start private instances for tests that must kill or
//! restart a service.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub mod api;
pub mod call;
pub mod group;
pub mod log;
pub mod produce;
pub mod scenario;
pub mod service;

pub use api::{Answer, Api, User};
pub use service::Service;

/// Where the shared local stack answers (the variables `deploy/local/lib.sh` exports, with the
/// same defaults).
pub mod env {
    fn var(name: &str, default: &str) -> String {
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| default.to_string())
    }
    pub fn kafka_brokers() -> String {
        var("CHAT_KAFKA_BROKERS", "127.0.0.1:9092")
    }
    pub fn registry_url() -> String {
        var("CHAT_REGISTRY_URL", schemas::DEFAULT_REGISTRY_URL)
    }
    pub fn pg_url() -> String {
        var("CHAT_PG_URL", "postgres://postgres@127.0.0.1:5432/chat")
    }
    pub fn redis_url() -> String {
        var("CHAT_REDIS_URL", "redis://127.0.0.1:6379")
    }
    pub fn query_url() -> String {
        var("CHAT_QUERY_URL", "http://127.0.0.1:8091")
    }
    pub fn clickhouse_url() -> String {
        var("CHAT_CLICKHOUSE_URL", "http://127.0.0.1:8123")
    }
    pub fn mongo_url() -> String {
        var("CHAT_MONGO_URL", platform::config::LOCAL_MONGO_URL)
    }
    pub fn commands_url() -> String {
        var("CHAT_COMMANDS_URL", "http://127.0.0.1:8090")
    }
    /// nginx, the stack's single entry point.
    pub fn entry_url() -> String {
        var("CHAT_ENTRY_URL", "http://127.0.0.1:8080")
    }
    /// The stack's own ws-fanout node.
    pub fn ws_url() -> String {
        var("CHAT_WS_URL", "http://127.0.0.1:8092")
    }
    pub fn signaling_url() -> String {
        var("CHAT_SIGNALING_URL", "http://127.0.0.1:8093")
    }
    /// Settings of one more ws-fanout node listening on `port`, joined to this stack.
    pub fn ws_fanout_node(port: u16) -> Vec<(String, String)> {
        [
            ("CHAT_WS_LISTEN", format!("127.0.0.1:{port}")),
            ("CHAT_KAFKA_BROKERS", kafka_brokers()),
            ("CHAT_REGISTRY_URL", registry_url()),
            ("CHAT_REDIS_URL", redis_url()),
            (
                "CHAT_REDIS_PREFIX",
                std::env::var("CHAT_REDIS_PREFIX").unwrap_or_default(),
            ),
            ("CHAT_JWKS_URL", format!("{}/v1/auth/jwks", commands_url())),
            ("CHAT_COMMANDS_URL", commands_url()),
            ("CHAT_QUERY_URL", query_url()),
            ("CHAT_SIGNALING_URL", signaling_url()),
            ("RUST_LOG", "info".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
    pub fn jwt_private_key_file() -> String {
        let home = std::env::var("HOME").unwrap_or_default();
        var(
            "CHAT_JWT_PRIVATE_KEY_FILE",
            &format!("{home}/.local/state/chat-platform/keys/jwt-private.pem"),
        )
    }
}

/// A name no other test (or earlier run) uses: `prefix-<uuid v7 simple>`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

/// A lowercase SQL identifier no other test uses.
pub fn unique_ident(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// A loopback port free right now, for a service a test starts.
///
/// Chosen at random below the kernel's ephemeral range (32768-60999 here) and away from the
/// stacks' fixed ports: a port the kernel hands out for `:0` is also what it hands the next
/// process asking, and what outgoing connections use, so two tests starting services at once
/// could otherwise be given the same one. Never the same port twice within one test process.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = match GIVEN.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    loop {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let r = h.finish();
        let base = if r.is_multiple_of(2) { 10_000 } else { 20_000 };
        let port = base + ((r / 2) % 7_000) as u16;
        // 10000-16999 or 20000-26999: clear of the bench stack (18xxx-19xxx), the test stack
        // (28xxx-29xxx) and the development stack (below 10000, 27017).
        if given.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
}

/// Polls `check` until it returns `Some`, failing after `timeout` with `what` in the message.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `progress` until it reaches `target`, failing only when it stood still for `stall`
/// (a slow machine is not a failure; a stuck one is). `progress` returns `None` while the
/// value cannot be read.
pub async fn wait_progressing<F, Fut>(
    what: &str,
    target: i64,
    stall: Duration,
    mut progress: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<i64>>,
{
    let mut best = i64::MIN;
    let mut moved_at = Instant::now();
    loop {
        if let Some(value) = progress().await {
            if value >= target {
                return Ok(());
            }
            if value > best {
                best = value;
                moved_at = Instant::now();
            }
        }
        if moved_at.elapsed() >= stall {
            bail!("{what}: stuck at {best} of {target} for {stall:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The repository root (tests run with the crate directory as working directory).
pub fn repo_root() -> PathBuf {
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    while !dir.join("deploy/local/up").exists() {
        if !dir.pop() {
            panic!(
                "cannot find deploy/local/up above {}",
                env!("CARGO_MANIFEST_DIR")
            );
        }
    }
    dir
}

/// The directory holding the workspace binaries of this build (`target/<profile>`): the test
/// executable lives in its `deps/` subdirectory.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .expect("test executable has no grandparent directory")
}

/// A second stack with its own state directory and ports, driven by the same
/// `deploy/local/{up,down}` scripts as the shared one, for tests that kill or restart services.
/// Everything it started is stopped when it is dropped.
pub struct PrivateStack {
    state: tempfile::TempDir,
    vars: Vec<(String, String)>,
}

impl PrivateStack {
    /// `settings`: variables of `deploy/local/lib.sh` to override, e.g.
    /// `("CHAT_KAFKA_PORT", free_port().to_string())`.
    pub fn new(settings: &[(&str, String)]) -> anyhow::Result<Self> {
        let state = tempfile::Builder::new()
            .prefix("chat-stack-")
            .tempdir()
            .context("temp dir")?;
        let mut vars = vec![
            (
                "CHAT_STATE_DIR".to_string(),
                state.path().display().to_string(),
            ),
            ("CHAT_BIN_DIR".to_string(), bin_dir().display().to_string()),
        ];
        for (name, value) in settings {
            vars.push((name.to_string(), value.clone()));
        }
        // A private broker gets a controller port of its own too (the default, client port + 1,
        // may be taken: the client port was picked at random).
        let set = |name: &str| settings.iter().any(|(n, _)| *n == name);
        // Its own signing key, not the one the test command exported for the shared stack.
        if !set("CHAT_JWT_PRIVATE_KEY_FILE") {
            vars.push((
                "CHAT_JWT_PRIVATE_KEY_FILE".to_string(),
                state
                    .path()
                    .join("keys/jwt-private.pem")
                    .display()
                    .to_string(),
            ));
        }
        if set("CHAT_KAFKA_PORT") && !set("CHAT_KAFKA_CONTROLLER_PORT") && !set("CHAT_KAFKA_PORTS")
        {
            vars.push((
                "CHAT_KAFKA_CONTROLLER_PORT".to_string(),
                free_port().to_string(),
            ));
        }
        Ok(Self { state, vars })
    }

    fn script(&self, script: &str, services: &[&str]) -> anyhow::Result<String> {
        let mut command = Command::new(repo_root().join("deploy/local").join(script));
        command.args(services);
        for (k, v) in &self.vars {
            command.env(k, v);
        }
        let output = command
            .output()
            .with_context(|| format!("running deploy/local/{script}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if !output.status.success() {
            bail!("deploy/local/{script} {services:?} failed: {text}");
        }
        Ok(text)
    }

    pub fn up(&self, services: &[&str]) -> anyhow::Result<String> {
        self.script("up", services)
    }

    pub fn down(&self, services: &[&str]) -> anyhow::Result<String> {
        self.script("down", services)
    }

    /// The `CHAT_*` variables this stack's services run with (what `deploy/local/lib.sh`
    /// derives from the settings), for tiers a test starts beside them.
    pub fn env(&self) -> anyhow::Result<Vec<(String, String)>> {
        let mut command = Command::new("bash");
        command
            .arg("-c")
            .arg("source \"$1\" && env -0")
            .arg("bash")
            .arg(repo_root().join("deploy/local/lib.sh"));
        for (k, v) in &self.vars {
            command.env(k, v);
        }
        let output = command.output().context("sourcing deploy/local/lib.sh")?;
        if !output.status.success() {
            bail!(
                "sourcing deploy/local/lib.sh failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(output
            .stdout
            .split(|b| *b == 0)
            .filter_map(|entry| {
                let entry = String::from_utf8_lossy(entry);
                let (name, value) = entry.split_once('=')?;
                name.starts_with("CHAT_")
                    .then(|| (name.to_string(), value.to_string()))
            })
            .collect())
    }

    /// The pid `up` recorded for `service`.
    pub fn pid(&self, service: &str) -> anyhow::Result<i32> {
        let path = self.state.path().join("run").join(format!("{service}.pid"));
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        text.trim().parse().context("pid file content")
    }

    /// `kill -9` of a service this stack started: no chance to flush or clean up.
    pub fn kill9(&self, service: &str) -> anyhow::Result<()> {
        signal(self.pid(service)?, "KILL")
    }

    /// The log of a service this stack started, for failure messages.
    pub fn log(&self, service: &str) -> String {
        let path = self
            .state
            .path()
            .join("logs")
            .join(format!("{service}.log"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| format!("({}: {e})", path.display()))
    }

    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }
}

impl Drop for PrivateStack {
    fn drop(&mut self) {
        if let Err(e) = self.down(&[]) {
            eprintln!("stopping the private stack: {e}");
        }
    }
}

/// Sends `signal` (e.g. "KILL", "TERM") to `pid` without waiting.
pub fn signal_only(pid: i32, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -{signal} {pid} failed");
    }
    Ok(())
}

/// Sends `signal` (e.g. "KILL", "TERM") to `pid` and waits until the process is gone.
pub fn signal(pid: i32, signal: &str) -> anyhow::Result<()> {
    signal_only(pid, signal)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid) {
        if Instant::now() >= deadline {
            bail!("process {pid} still alive 30 s after SIG{signal}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}
