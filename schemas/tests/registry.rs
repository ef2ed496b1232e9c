//! What the platform relies on from the stack's registry (Apicurio, through its
//! Confluent-compatible API; its store is the real PostgreSQL): one id per schema whatever its
//! formatting, BACKWARD checks that refuse a breaking change, the Confluent error codes our codec
//! and Confluent's clients act on, and one version for concurrent registrations. Every test uses
//! its own subjects, so tests run in parallel.

use reqwest::StatusCode;
use serde_json::{Value, json};
use test_support::{env, unique};

const CT: &str = "application/vnd.schemaregistry.v1+json";

fn record(name: &str, fields: Value) -> String {
    json!({"type": "record", "name": name, "namespace": "test", "fields": fields}).to_string()
}

fn v1() -> String {
    record("Thing", json!([{"name": "a", "type": "long"}]))
}

fn v2_compatible() -> String {
    record(
        "Thing",
        json!([{"name": "a", "type": "long"}, {"name": "b", "type": ["null", "string"], "default": null}]),
    )
}

fn v2_incompatible() -> String {
    record(
        "Thing",
        json!([{"name": "a", "type": "long"}, {"name": "c", "type": "string"}]),
    )
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    fn new() -> Self {
        Self {
            http: reqwest::Client::new(),
            base: env::registry_url(),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.header("content-type", CT).body(body);
        }
        let response = request.send().await.expect("registry reachable");
        let status = response.status();
        let text = response.text().await.expect("body");
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, json)
    }

    async fn register(&self, subject: &str, schema: &str) -> (StatusCode, Value) {
        self.call(
            reqwest::Method::POST,
            &format!("/subjects/{subject}/versions"),
            Some(json!({"schema": schema}).to_string()),
        )
        .await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }
}

fn assert_error(got: &(StatusCode, Value), status: u16, code: u64) {
    assert_eq!(got.0.as_u16(), status, "{:?}", got.1);
    assert_eq!(got.1["error_code"], code, "{:?}", got.1);
    assert!(
        got.1["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{:?}",
        got.1
    );
}

#[tokio::test]
async fn same_schema_gets_the_same_id_everywhere() {
    let c = Client::new();
    let subject = unique("same");
    let (status, first) = c.register(&subject, &v1()).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let id = first["id"].as_i64().unwrap();

    // Same schema again, and reformatted with keys in another order: same id, no new version.
    assert_eq!(c.register(&subject, &v1()).await.1["id"], id);
    let reformatted = "{ \"fields\": [ {\"type\": \"long\", \"name\": \"a\"} ],\n  \"namespace\": \"test\", \"name\": \"Thing\", \"type\": \"record\" }";
    assert_eq!(c.register(&subject, reformatted).await.1["id"], id);
    assert_eq!(
        c.get(&format!("/subjects/{subject}/versions")).await.1,
        json!([1])
    );

    // Ids are global: the same schema under another subject keeps its id.
    let other = unique("same-other");
    assert_eq!(c.register(&other, &v1()).await.1["id"], id);

    // And it reads back by id, by version and by lookup.
    let (status, by_id) = c.get(&format!("/schemas/ids/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    let schema_text = by_id["schema"].as_str().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(schema_text).unwrap(),
        serde_json::from_str::<Value>(&v1()).unwrap()
    );
    let (_, latest) = c.get(&format!("/subjects/{subject}/versions/latest")).await;
    assert_eq!(latest["id"], id);
    assert_eq!(latest["version"], 1);
    assert_eq!(latest["subject"], subject.as_str());
    let (status, found) = c
        .call(
            reqwest::Method::POST,
            &format!("/subjects/{subject}"),
            Some(json!({"schema": reformatted}).to_string()),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(found["id"], id);
    assert_eq!(found["version"], 1);
    let (_, subjects) = c.get("/subjects").await;
    assert!(subjects.as_array().unwrap().contains(&json!(subject)));
}

#[tokio::test]
async fn backward_compatibility_is_enforced() {
    let c = Client::new();
    let subject = unique("compat");
    let id1 = c.register(&subject, &v1()).await.1["id"].as_i64().unwrap();

    // The stack sets the global level to BACKWARD (Confluent's default; Apicurio has none).
    assert_eq!(c.get("/config").await.1["compatibilityLevel"], "BACKWARD");
    let incompatible = c.register(&subject, &v2_incompatible()).await;
    assert_error(&incompatible, 409, 409);

    let (status, check) = c
        .call(
            reqwest::Method::POST,
            &format!("/compatibility/subjects/{subject}/versions/latest"),
            Some(json!({"schema": v2_incompatible()}).to_string()),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(check["is_compatible"], false);
    let (_, check) = c
        .call(
            reqwest::Method::POST,
            &format!("/compatibility/subjects/{subject}/versions/1"),
            Some(json!({"schema": v2_compatible()}).to_string()),
        )
        .await;
    assert_eq!(check["is_compatible"], true);

    let (status, v2) = c.register(&subject, &v2_compatible()).await;
    assert_eq!(status, StatusCode::OK);
    let id2 = v2["id"].as_i64().unwrap();
    assert!(id2 > id1);
    assert_eq!(
        c.get(&format!("/subjects/{subject}/versions")).await.1,
        json!([1, 2])
    );
    assert_eq!(
        c.get(&format!("/subjects/{subject}/versions/2")).await.1["id"],
        id2
    );

    // The subject's level can be relaxed, after which the break is accepted.
    let (status, set) = c
        .call(
            reqwest::Method::PUT,
            &format!("/config/{subject}"),
            Some(json!({"compatibility": "NONE"}).to_string()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{set}");
    assert_eq!(
        c.get(&format!("/config/{subject}")).await.1["compatibilityLevel"],
        "NONE"
    );
    assert_eq!(
        c.register(&subject, &v2_incompatible()).await.0,
        StatusCode::OK
    );
    let bad_level = c
        .call(
            reqwest::Method::PUT,
            &format!("/config/{subject}"),
            Some(json!({"compatibility": "SOMETIMES"}).to_string()),
        )
        .await;
    assert_error(&bad_level, 422, 42203);
}

/// The codes Confluent's clients branch on (40401 unknown subject, 40402 unknown version,
/// 40403 unknown schema, 42201 invalid schema), and a registry that keeps serving after garbage.
#[tokio::test]
async fn bad_requests_get_confluent_errors_and_the_registry_keeps_serving() {
    let c = Client::new();
    let subject = unique("bad");
    let path = format!("/subjects/{subject}/versions");
    let post = |body: &str| c.call(reqwest::Method::POST, &path, Some(body.to_string()));

    // Not JSON at all: refused (Apicurio answers it in plain text, not Confluent's JSON).
    assert_eq!(post("{not json").await.0, StatusCode::BAD_REQUEST);
    assert_error(&post(r#"{"schema": 42}"#).await, 422, 42201);
    assert_error(
        &post(&json!({"schema": "not even json"}).to_string()).await,
        422,
        42201,
    );
    assert_error(
        &post(&json!({"schema": "{\"type\":\"record\",\"name\":\"X\"}"}).to_string()).await,
        422,
        42201,
    );

    assert_error(
        &c.get(&format!("/subjects/{subject}/versions")).await,
        404,
        40401,
    );
    assert_error(
        &c.get(&format!("/subjects/{subject}/versions/latest")).await,
        404,
        40401,
    );
    assert_eq!(c.register(&subject, &v1()).await.0, StatusCode::OK);
    assert_error(
        &c.get(&format!("/subjects/{subject}/versions/7")).await,
        404,
        40402,
    );
    assert_error(&c.get("/schemas/ids/2147483000").await, 404, 40403);
    let lookup_missing = c
        .call(
            reqwest::Method::POST,
            &format!("/subjects/{subject}"),
            Some(json!({"schema": v2_compatible()}).to_string()),
        )
        .await;
    assert_error(&lookup_missing, 404, 40403);

    // Still registering.
    assert_eq!(
        c.register(&subject, &v2_compatible()).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn concurrent_registrations_agree_on_one_version() {
    let c = std::sync::Arc::new(Client::new());
    let subject = unique("race");
    c.register(&subject, &v1()).await;
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let c = c.clone();
            let subject = subject.clone();
            tokio::spawn(async move { c.register(&subject, &v2_compatible()).await })
        })
        .collect();
    let mut ids = std::collections::BTreeSet::new();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        ids.insert(body["id"].as_i64().unwrap());
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(
        c.get(&format!("/subjects/{subject}/versions")).await.1,
        json!([1, 2])
    );
}
