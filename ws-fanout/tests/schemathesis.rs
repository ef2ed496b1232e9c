//! Schemathesis (PyPI) against the OpenAPI document the entry serves: every documented
//! operation called through nginx with generated requests, valid and invalid, anonymously and
//! with a user's token. No answer may be a 5xx, and no request may go unanswered.

mod common;

use std::process::Command;

use anyhow::Context;
use test_support::{Api, env};

#[tokio::test]
async fn no_generated_request_gets_a_server_error() -> anyhow::Result<()> {
    let st = std::env::var("CHAT_SCHEMATHESIS").map_err(|_| {
        anyhow::anyhow!(
            "CHAT_SCHEMATHESIS is not set: run the tests through deploy/local/test, which installs schemathesis"
        )
    })?;
    let entry = env::entry_url();
    let api = Api::new(entry.clone());
    let user = api.user("fuzzer").await?;
    // Something for path parameters to name; most generated ids name nothing and get 404.
    let room = api.create_room(&user, "public").await?;
    let examples = std::env::var("CHAT_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "10".into());
    let entry_for_blocking = entry.clone();
    let token = user.access_token.clone();
    // Hypothesis keeps its files in the working directory, which is not the repository's.
    let scratch = tempfile::tempdir()?;
    let scratch_path = scratch.path().to_path_buf();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&st)
            .current_dir(&scratch_path)
            .args(["--no-color", "run"])
            .arg(format!("{entry_for_blocking}/v1/openapi.json"))
            .args(["--url", &entry_for_blocking])
            .args(["--checks", "not_a_server_error"])
            .args(["--phases", "examples,coverage,fuzzing"])
            .args(["--max-examples", &examples])
            .args(["--workers", "1"])
            // Above the long poll's longest wait (25 s).
            .args(["--request-timeout", "40"])
            // Logging out would end the session the rest of the run uses.
            .args(["--exclude-path", "/v1/auth/logout"])
            .args(["--header", &format!("Authorization: Bearer {token}")])
            .args(["--generation-database", "none"])
            .output()
    })
    .await?
    .context("running schemathesis")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{text}");
    anyhow::ensure!(
        output.status.success(),
        "schemathesis found failures (room {room}):\n{text}"
    );
    Ok(())
}
