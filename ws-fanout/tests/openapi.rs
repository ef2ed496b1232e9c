//! The platform's OpenAPI document, as the entry point serves it, against the running platform:
//! every documented operation is called through the entry twice, anonymously and as a user
//! entitled to it with a request built from the document, and must answer with a status the
//! document lists for that operation. An operation that needs a token refuses the anonymous
//! call with 401 and the error body; the entitled call succeeds, and its body has the documented
//! shape (an object with the schema's required fields, an array, or bytes).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, bail};
use reqwest::Method;
use serde_json::{Value, json};
use test_support::call::{Peer, Rate};
use test_support::{Api, User, env, group};

const T: Duration = Duration::from_secs(60);

/// What one operation's calls may refer to: an owner with a room, a message in it (with a
/// reaction and an attached file, all projected), a member and a user who is neither.
struct Fixture {
    owner: User,
    member: User,
    outsider: User,
    room: String,
    /// Invites are for private rooms.
    private_room: String,
    message: String,
    file: String,
    /// A call in `room` started by `member`, answered by `outsider` (a member of `room` for
    /// the call's sake, though of no other room of the fixture). `room` has three members,
    /// so the call goes through the SFU.
    call: String,
    /// SDPs of real WebRTC connections for the SFU's routes (see [`Fixture::prepare_sfu`]).
    sfu: Option<SfuSdps>,
}

/// The member's offer to publish, and their answer to the SFU's offer of the outsider's
/// media (the outsider publishing), with the connections they came from kept open.
struct SfuSdps {
    offer: String,
    answer: String,
    _peers: Vec<Peer>,
}

impl Fixture {
    /// Makes what the SFU routes need: their bodies are SDPs, which only real connections
    /// make and Janus checks.
    async fn prepare_sfu(&mut self, api: &Api) -> anyhow::Result<()> {
        let address = group::sfu_network()?;
        let mine = group::sfu_peer(address, Some(Rate::default())).await?;
        let offer = group::offer(&mine).await?;
        let theirs = group::sfu_peer(address, Some(Rate::default())).await?;
        group::publish(api, &self.outsider, &self.call, &theirs).await?;
        let offered = group::sfu(
            api,
            &self.member,
            &self.call,
            "subscribe",
            json!({"feed": self.outsider.user_id}),
        )
        .await?;
        let receiving = group::sfu_peer(address, None).await?;
        let answer = group::answer(&receiving, offered["sdp"].as_str().unwrap_or_default()).await?;
        self.sfu = Some(SfuSdps {
            offer,
            answer,
            _peers: vec![mine, theirs, receiving],
        });
        Ok(())
    }

    fn sdp(&self, path: &str) -> String {
        let sdps = self.sfu.as_ref().expect("prepare_sfu first");
        if path.ends_with("/start") {
            sdps.answer.clone()
        } else {
            sdps.offer.clone()
        }
    }
}

impl Fixture {
    async fn new(api: &Api, http: &reqwest::Client) -> anyhow::Result<Self> {
        let owner = api.user("oaown").await?;
        let member = api.user("oamem").await?;
        let outsider = api.user("oaout").await?;
        let room = api.create_room(&owner, "public").await?;
        let private_room = api.create_room(&owner, "private").await?;
        api.join(&member, &room).await?;
        let file = upload(http, &owner).await?["file_id"]
            .as_str()
            .context("file_id")?
            .to_string();
        let posted = api
            .call(
                Method::POST,
                &format!("/v1/rooms/{room}/messages"),
                Some(&owner.access_token),
                Some(json!({"client_msg_id": "m1", "content": "hello openapi", "attachments": [file]})),
            )
            .await?;
        let message = posted.body["message_id"]
            .as_str()
            .with_context(|| format!("post: {posted:?}"))?
            .to_string();
        api.call(
            Method::PUT,
            &format!("/v1/rooms/{room}/messages/{message}/reactions/:thumbsup:"),
            Some(&owner.access_token),
            None,
        )
        .await?;
        api.join(&outsider, &room).await?;
        let started = api
            .call(
                Method::POST,
                &format!("/v1/rooms/{room}/calls"),
                Some(&member.access_token),
                Some(json!({"media": "audio"})),
            )
            .await?;
        let call = started.body["call_id"]
            .as_str()
            .with_context(|| format!("call: {started:?}"))?
            .to_string();
        let answered = api
            .call(
                Method::POST,
                &format!("/v1/rooms/{room}/calls/{call}/join"),
                Some(&outsider.access_token),
                None,
            )
            .await?;
        anyhow::ensure!(answered.status.is_success(), "answer: {answered:?}");
        // Reads answer once the projectors have the message and the file.
        test_support::wait_for("the file through the read side", T, || async {
            let answer = api
                .call(
                    Method::GET,
                    &format!("/v1/files/{file}"),
                    Some(&owner.access_token),
                    None,
                )
                .await
                .ok()?;
            answer.status.is_success().then_some(())
        })
        .await?;
        Ok(Self {
            owner,
            member,
            outsider,
            room,
            private_room,
            message,
            file,
            call,
            sfu: None,
        })
    }

    /// Who calls `method path` in the entitled case.
    fn caller(&self, method: &str, path: &str) -> &User {
        match (method, path) {
            ("post", "/v1/rooms/{room_id}/leave") => &self.member,
            ("post", "/v1/rooms/{room_id}/join") => &self.outsider,
            // The call's own caller hangs up or ends it; the owner joins or declines it.
            ("post", "/v1/rooms/{room_id}/calls/{call_id}/leave")
            | ("post", "/v1/rooms/{room_id}/calls/{call_id}/end")
            | ("post", "/v1/calls/{call_id}/signal") => &self.member,
            // A participant uses the call's SFU.
            (_, p) if p.contains("/sfu/") => &self.member,
            _ => &self.owner,
        }
    }

    fn path_value(&self, path: &str, name: &str) -> String {
        match name {
            // A new call starts in a room without one.
            "room_id" if path.ends_with("/invites") || path.ends_with("/calls") => {
                self.private_room.clone()
            }
            "room_id" => self.room.clone(),
            "message_id" => self.message.clone(),
            "file_id" => self.file.clone(),
            "user_id" => self.member.user_id.clone(),
            "emoji" => ":thumbsup:".into(),
            "call_id" => self.call.clone(),
            other => panic!("no value for path parameter {other}"),
        }
    }

    fn query_value(&self, name: &str) -> Option<String> {
        match name {
            "room_id" => Some(self.room.clone()),
            "q" => Some("hello".into()),
            "since_seq" => Some("0".into()),
            "wait_ms" => Some("0".into()),
            _ => None,
        }
    }

    /// A value for a property of a request body (the target of an invite is someone not in
    /// the room yet; of a ban or role change, a member).
    fn body_value(&self, path: &str, name: &str) -> Value {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let n = format!("oa{}", &id[id.len() - 12..]);
        match name {
            "user_id" if path.ends_with("/invites") => json!(self.outsider.user_id),
            "user_id" => json!(self.member.user_id),
            "email" => json!(format!("{n}@example.org")),
            "username" => json!(n),
            "password" if path.ends_with("/login") => json!(self.owner.password),
            "password" => json!("a long enough password"),
            "login" => json!(self.owner.username),
            "refresh_token" => json!(self.owner.refresh_token),
            "name" => json!("renamed room"),
            "visibility" => json!("public"),
            "topic" => json!("a topic"),
            "role" => json!("moderator"),
            "client_msg_id" => json!(n),
            "content" => json!("edited or posted"),
            "reason" => json!("spam"),
            "seq" => json!(1),
            "media" => json!("audio"),
            "to" => json!(self.outsider.user_id),
            "payload" => json!({"type": "offer", "sdp": "v=0\r\n"}),
            "busy" => json!(false),
            "sdp" => json!(self.sdp(path)),
            "feed" => json!(self.outsider.user_id),
            other => panic!("no value for body property {other} of {path}"),
        }
    }
}

async fn upload(http: &reqwest::Client, user: &User) -> anyhow::Result<Value> {
    let response = common::upload(
        http,
        &user.access_token,
        "hello.txt",
        b"hello file".to_vec(),
    )
    .await?;
    if response.status() != reqwest::StatusCode::CREATED {
        bail!("upload: {}", response.status());
    }
    Ok(response.json().await?)
}

/// `#/components/schemas/X` of the document.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => &doc["components"]["schemas"][r.rsplit('/').next().unwrap_or_default()],
        None => schema,
    }
}

/// The body the operation documents, built from its schema's properties.
fn request_body(doc: &Value, op: &Value, path: &str, fixture: &Fixture) -> Option<Value> {
    let schema = op["requestBody"]["content"]["application/json"].get("schema")?;
    let schema = resolve(doc, schema);
    let mut body = serde_json::Map::new();
    for (name, _) in schema["properties"].as_object()? {
        // Optional parts left out; an invite names its invitee one way (by id here, by
        // username in query-api/tests/invitations.rs).
        if name == "attachments"
            || name == "reply_to"
            || (name == "username" && path.ends_with("/invites"))
        {
            continue;
        }
        body.insert(name.clone(), fixture.body_value(path, name));
    }
    Some(Value::Object(body))
}

/// Whether `body` has the shape of the schema the operation documents for `status`.
fn check_body(doc: &Value, op: &Value, status: u16, body: &[u8]) -> anyhow::Result<()> {
    let content = &op["responses"][status.to_string()]["content"];
    let Some(schema) = content["application/json"].get("schema") else {
        return Ok(());
    };
    let value: Value = serde_json::from_slice(body).context("a JSON body")?;
    let schema = resolve(doc, schema);
    match schema["type"].as_str() {
        Some("array") if !value.is_array() => bail!("documented an array, got {value}"),
        Some("object") | None if !value.is_object() => bail!("documented an object, got {value}"),
        _ => {}
    }
    for field in schema["required"].as_array().into_iter().flatten() {
        let field = field.as_str().unwrap_or_default();
        if value.get(field).is_none() {
            bail!("documented field {field} missing from {value}");
        }
    }
    Ok(())
}

/// Every `$ref` in `value`.
fn references(value: &Value, into: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                match (key.as_str(), inner) {
                    ("$ref", Value::String(r)) => {
                        into.insert(r.clone());
                    }
                    _ => references(inner, into),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| references(v, into)),
        _ => {}
    }
}

fn documented(op: &Value, status: u16) -> bool {
    op["responses"].get(status.to_string()).is_some()
}

#[tokio::test]
async fn every_documented_operation_answers_as_documented() -> anyhow::Result<()> {
    let entry = env::entry_url();
    let api = Api::new(&entry);
    let http = reqwest::Client::new();
    let doc: Value = http
        .get(format!("{entry}/v1/openapi.json"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert!(
        doc["openapi"]
            .as_str()
            .unwrap_or_default()
            .starts_with("3.")
    );
    let mut operations = Vec::new();
    for (path, item) in doc["paths"].as_object().context("paths")? {
        for (method, op) in item.as_object().context("path item")? {
            operations.push((method.clone(), path.clone(), op.clone()));
        }
    }
    // Every tier's part is there: identity, uploads and writes (commands), reads (query-api),
    // the socket and long polls (ws-fanout).
    let paths: BTreeSet<&str> = operations.iter().map(|(_, p, _)| p.as_str()).collect();
    for path in [
        "/v1/auth/login",
        "/v1/files",
        "/v1/rooms/{room_id}/messages",
        "/v1/search",
        "/v1/ws",
        "/v1/poll",
    ] {
        assert!(paths.contains(path), "{path} is documented");
    }
    assert!(operations.len() >= 30, "{} operations", operations.len());
    let mut refs = BTreeSet::new();
    references(&doc, &mut refs);
    for reference in &refs {
        let pointer = reference.strip_prefix('#').context("a local reference")?;
        assert!(
            doc.pointer(pointer).is_some(),
            "{reference} is referred to and defined"
        );
    }

    for (method, path, op) in &operations {
        let label = format!("{} {path}", method.to_uppercase());
        let mut fixture = Fixture::new(&api, &http).await?;
        if path.contains("/sfu/") {
            fixture.prepare_sfu(&api).await?;
        }
        let secured = op.get("security").is_some();

        // Anonymous, with well-formed ids.
        let anonymous_path = path_with(path, |_| uuid::Uuid::now_v7().to_string());
        let mut request = http.request(
            Method::from_bytes(method.to_uppercase().as_bytes())?,
            format!("{entry}{anonymous_path}"),
        );
        if op["requestBody"]["content"]
            .get("application/json")
            .is_some()
        {
            request = request.json(&json!({}));
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        assert!(
            documented(op, status),
            "{label} anonymous: {status} is not documented"
        );
        if secured {
            assert_eq!(status, 401, "{label} anonymous");
            let body: Value = response.json().await?;
            assert!(
                body["error"]["code"].is_string() && body["error"]["message"].is_string(),
                "{label} anonymous: error body {body}"
            );
        }

        // Entitled.
        let caller = fixture.caller(method, path);
        let concrete = path_with(path, |name| fixture.path_value(path, name));
        if path == "/v1/ws" {
            let ws = format!("{}{concrete}", entry.replacen("http", "ws", 1));
            common::Client::connect(&ws, Some(&caller.access_token))
                .await
                .with_context(|| format!("{label}: 101 as documented"))?;
            assert!(documented(op, 101));
            continue;
        }
        let mut query = Vec::new();
        for param in op["parameters"].as_array().into_iter().flatten() {
            let name = param["name"].as_str().unwrap_or_default();
            if param["in"] == "query"
                && let Some(value) = fixture.query_value(name)
            {
                query.push((name.to_string(), value));
            }
        }
        // The values are ids, digits and plain words: nothing to escape.
        let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut request = http.request(
            Method::from_bytes(method.to_uppercase().as_bytes())?,
            format!("{entry}{concrete}?{}", query.join("&")),
        );
        if secured {
            request = request.bearer_auth(&caller.access_token);
        }
        if op["requestBody"]["content"]
            .get("multipart/form-data")
            .is_some()
        {
            let body = upload(&http, caller).await?;
            assert!(documented(op, 201), "{label}: {body}");
            continue;
        }
        if let Some(body) = request_body(&doc, op, path, &fixture) {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await?;
        assert!(
            (200..300).contains(&status),
            "{label} as {}: {status} {}",
            caller.username,
            String::from_utf8_lossy(&bytes)
        );
        assert!(
            documented(op, status),
            "{label}: {status} is not documented"
        );
        check_body(&doc, op, status, &bytes).with_context(|| label.clone())?;
    }
    Ok(())
}

/// `path` with each `{name}` replaced by `value(name)`.
fn path_with(path: &str, value: impl Fn(&str) -> String) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').map_or(rest.len(), |e| start + e);
        out.push_str(&value(&rest[start + 1..end]));
        rest = &rest[(end + 1).min(rest.len())..];
    }
    out.push_str(rest);
    out
}
