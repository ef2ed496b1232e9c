//! Ids survive restarts of the registry, graceful or not: the ids are in every stored record,
//! so a registry that renumbered after a restart would make the whole log unreadable. Uses a
//! private registry (own port, own PostgreSQL database) started and restarted by the same
//! `deploy/local` scripts as the shared stack, so restarting it disturbs no other test.

use std::time::Duration;

use serde_json::{Value, json};
use test_support::{PrivateStack, free_port, unique, unique_ident, wait_for};

async fn register(http: &reqwest::Client, base: &str, subject: &str, schema: &str) -> i64 {
    let body: Value = http
        .post(format!("{base}/subjects/{subject}/versions"))
        .header("content-type", "application/vnd.schemaregistry.v1+json")
        .body(json!({"schema": schema}).to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["id"].as_i64().unwrap_or_else(|| panic!("{body}"))
}

fn schema(name: &str) -> String {
    json!({"type": "record", "name": name, "fields": [{"name": "a", "type": "long"}]}).to_string()
}

#[tokio::test]
async fn ids_are_stable_across_restarts() -> anyhow::Result<()> {
    let port = free_port();
    let database = DropDatabase(unique_ident("registry_test"));
    let stack = PrivateStack::new(&[
        ("CHAT_REGISTRY_PORT", port.to_string()),
        ("CHAT_REGISTRY_PG_DATABASE", database.0.clone()),
    ])?;
    stack.up(&["registry"])?;
    let base = format!("http://127.0.0.1:{port}/apis/ccompat/v7");
    // No pooled connections: a kept-alive connection to the stopped process would fail the
    // first request after each restart, which is the client's problem, not the registry's.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;

    let subjects: Vec<String> = (0..5).map(|i| unique(&format!("restart{i}"))).collect();
    let mut ids = Vec::new();
    for (i, subject) in subjects.iter().enumerate() {
        ids.push(register(&http, &base, subject, &schema(&format!("R{i}"))).await);
    }

    // `up` again while it runs changes nothing.
    let pid = stack.pid("registry")?;
    stack.up(&["registry"])?;
    assert_eq!(stack.pid("registry")?, pid);

    for how in ["graceful", "kill -9"] {
        if how == "graceful" {
            stack.down(&["registry"])?;
        } else {
            stack.kill9("registry")?;
        }
        stack.up(&["registry"])?;
        for (i, subject) in subjects.iter().enumerate() {
            assert_eq!(
                register(&http, &base, subject, &schema(&format!("R{i}"))).await,
                ids[i],
                "after {how}"
            );
            let by_id: Value = http
                .get(format!("{base}/schemas/ids/{}", ids[i]))
                .send()
                .await?
                .json()
                .await?;
            let stored: Value = serde_json::from_str(by_id["schema"].as_str().unwrap())?;
            assert_eq!(stored["name"], format!("R{i}"), "after {how}");
            let versions: Value = http
                .get(format!("{base}/subjects/{subject}/versions"))
                .send()
                .await?
                .json()
                .await?;
            assert_eq!(versions, json!([1]), "after {how}");
        }
    }

    // A new schema after the restarts gets a new id, never a reused one.
    let fresh = register(&http, &base, &unique("restart-new"), &schema("Fresh")).await;
    assert!(ids.iter().all(|&id| fresh > id), "{fresh} vs {ids:?}");

    // It still answers after all that, until the stack is dropped (which stops it).
    wait_for("subjects", Duration::from_secs(5), || async {
        http.get(format!("{base}/subjects"))
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success())
    })
    .await?;
    Ok(())
}

/// Drops the private registry's database once the test is over, pass or fail. Declared before
/// the stack, so it is dropped after the stack has stopped the registry.
struct DropDatabase(String);

impl Drop for DropDatabase {
    fn drop(&mut self) {
        let pg_url = test_support::env::pg_url();
        let server = pg_url.rsplit_once('/').map_or(pg_url.as_str(), |(s, _)| s);
        let _ = std::process::Command::new("psql")
            .args(["-q", "-d", &format!("{server}/postgres"), "-c"])
            .arg(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.0
            ))
            .status();
    }
}
