//! A small client of the platform's HTTP API for tests.

use std::time::Duration;

use anyhow::{Context, bail};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// An HTTP answer: status, `Retry-After` and the JSON body (or the text as a JSON string).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub retry_after: Option<u64>,
    pub body: Value,
}

impl Answer {
    /// The `error.code` of an API error body.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

/// A made-up private client address, sent as `X-Forwarded-For` (trusted from loopback).
fn random_address() -> String {
    let n = uuid::Uuid::new_v4().as_u128();
    format!("10.{}.{}.{}", (n >> 16) as u8, (n >> 8) as u8, n as u8)
}

#[derive(Clone)]
pub struct Api {
    pub base: String,
    http: reqwest::Client,
    /// Sent as `X-Forwarded-For`, so login throttling by IP is per test, not per machine.
    client_ip: String,
    /// Waits out 429s (see [`Api::patient`]).
    patient: bool,
}

/// A logged-in user.
#[derive(Debug, Clone)]
pub struct User {
    pub user_id: String,
    pub username: String,
    pub password: String,
    pub access_token: String,
    pub refresh_token: String,
}

impl Api {
    pub fn new(base: impl Into<String>) -> Self {
        Self {
            base: base.into().trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(0)
                .build()
                .expect("http client"),
            client_ip: random_address(),
            patient: false,
        }
    }

    /// A client that waits `Retry-After` and sends again when a budget is spent, as a real
    /// client does; for tests that check what a heavy user reads and writes, not the budgets.
    pub fn patient(self) -> Self {
        Self {
            patient: true,
            ..self
        }
    }

    /// The same client seen from another address (a different person, for the per-address
    /// budgets: registrations, refreshes, login backoff).
    pub fn with_fresh_address(&self) -> Self {
        Self {
            client_ip: random_address(),
            ..self.clone()
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> anyhow::Result<Answer> {
        let mut waited = Duration::ZERO;
        loop {
            let answer = self
                .call_once(method.clone(), path, token, body.clone())
                .await?;
            if !self.patient
                || answer.status != StatusCode::TOO_MANY_REQUESTS
                || waited > Duration::from_secs(120)
            {
                return Ok(answer);
            }
            let wait = Duration::from_secs(answer.retry_after.unwrap_or(1));
            tokio::time::sleep(wait).await;
            waited += wait;
        }
    }

    async fn call_once(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> anyhow::Result<Answer> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("x-forwarded-for", &self.client_ip);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{path} unreachable"))?;
        Self::answer(response).await
    }

    /// Sends a raw body (for malformed-input tests).
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<Answer> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("x-forwarded-for", &self.client_ip)
            .header("content-type", content_type)
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        Self::answer(request.send().await?).await
    }

    async fn answer(response: reqwest::Response) -> anyhow::Result<Answer> {
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let text = response.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Answer {
            status,
            retry_after,
            body,
        })
    }

    pub async fn register(&self, prefix: &str) -> anyhow::Result<(String, String, String)> {
        let suffix = uuid::Uuid::now_v7().simple().to_string();
        let username = format!("{}{}", prefix, &suffix[suffix.len() - 12..]);
        let password = format!("pw-{suffix}");
        // Each registration from its own address: tests register many people, each of whom
        // registers once (the per-address budget has a test of its own).
        let answer = self
            .with_fresh_address()
            .call(
                Method::POST,
                "/v1/auth/register",
                None,
                Some(json!({"email": format!("{username}@example.test"), "username": username, "password": password})),
            )
            .await?;
        if answer.status != StatusCode::CREATED {
            bail!("register {username}: {} {}", answer.status, answer.body);
        }
        let user_id = answer.body["user_id"]
            .as_str()
            .context("user_id")?
            .to_string();
        Ok((user_id, username, password))
    }

    pub async fn login(&self, login: &str, password: &str) -> anyhow::Result<Answer> {
        self.call(
            Method::POST,
            "/v1/auth/login",
            None,
            Some(json!({"login": login, "password": password})),
        )
        .await
    }

    /// Presents a refresh token (`POST /v1/auth/refresh`).
    pub async fn refresh(&self, refresh_token: &str) -> anyhow::Result<Answer> {
        self.call(
            Method::POST,
            "/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": refresh_token})),
        )
        .await
    }

    /// Registers a fresh user (`prefix` + random) and logs in.
    pub async fn user(&self, prefix: &str) -> anyhow::Result<User> {
        let (user_id, username, password) = self.register(prefix).await?;
        let answer = self.login(&username, &password).await?;
        if answer.status != StatusCode::OK {
            bail!("login {username}: {} {}", answer.status, answer.body);
        }
        Ok(User {
            user_id,
            username,
            password,
            access_token: answer.body["access_token"]
                .as_str()
                .context("access_token")?
                .to_string(),
            refresh_token: answer.body["refresh_token"]
                .as_str()
                .context("refresh_token")?
                .to_string(),
        })
    }

    pub async fn create_room(&self, user: &User, visibility: &str) -> anyhow::Result<String> {
        let answer = self
            .call(
                Method::POST,
                "/v1/rooms",
                Some(&user.access_token),
                Some(json!({"name": "test room", "visibility": visibility})),
            )
            .await?;
        if answer.status != StatusCode::CREATED {
            bail!("create room: {} {}", answer.status, answer.body);
        }
        Ok(answer.body["room_id"]
            .as_str()
            .context("room_id")?
            .to_string())
    }

    pub async fn post(
        &self,
        user: &User,
        room: &str,
        client_msg_id: &str,
        content: &str,
    ) -> anyhow::Result<Answer> {
        self.call(
            Method::POST,
            &format!("/v1/rooms/{room}/messages"),
            Some(&user.access_token),
            Some(json!({"client_msg_id": client_msg_id, "content": content})),
        )
        .await
    }

    /// Posts until the platform accepts it: 429 waits `Retry-After`, 503 and connection errors
    /// retry with the same `client_msg_id` (which is what makes retrying safe).
    pub async fn post_until_accepted(
        &self,
        user: &User,
        room: &str,
        client_msg_id: &str,
        content: &str,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let outcome = self.post(user, room, client_msg_id, content).await;
            match outcome {
                Ok(a) if a.status == StatusCode::CREATED => return Ok(a.body),
                Ok(a) if a.status == StatusCode::TOO_MANY_REQUESTS => {
                    tokio::time::sleep(Duration::from_millis(a.retry_after.unwrap_or(1) * 1000 / 4))
                        .await
                }
                Ok(a) if a.status == StatusCode::SERVICE_UNAVAILABLE => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Ok(a) => bail!("post {client_msg_id}: {} {}", a.status, a.body),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
            if std::time::Instant::now() >= deadline {
                bail!("post {client_msg_id} not accepted within {timeout:?}");
            }
        }
    }

    pub async fn join(&self, user: &User, room: &str) -> anyhow::Result<Answer> {
        self.call(
            Method::POST,
            &format!("/v1/rooms/{room}/join"),
            Some(&user.access_token),
            None,
        )
        .await
    }

    /// `owner` invites each of `users` to the private `room` (by id) and they join.
    pub async fn invite_and_join(
        &self,
        owner: &User,
        room: &str,
        users: &[&User],
    ) -> anyhow::Result<()> {
        for user in users {
            let invited = self
                .call(
                    Method::POST,
                    &format!("/v1/rooms/{room}/invites"),
                    Some(&owner.access_token),
                    Some(json!({"user_id": user.user_id})),
                )
                .await?;
            if invited.status != StatusCode::CREATED {
                bail!("invite: {} {}", invited.status, invited.body);
            }
            let joined = self.join(user, room).await?;
            if joined.status != StatusCode::OK {
                bail!("join: {} {}", joined.status, joined.body);
            }
        }
        Ok(())
    }

    /// `user` starts a call in `room` (`POST /v1/rooms/{room}/calls`); its id.
    pub async fn start_call(&self, user: &User, room: &str) -> anyhow::Result<String> {
        let started = self
            .call(
                Method::POST,
                &format!("/v1/rooms/{room}/calls"),
                Some(&user.access_token),
                Some(json!({"media": "video"})),
            )
            .await?;
        if started.status != StatusCode::CREATED {
            bail!("start a call: {} {}", started.status, started.body);
        }
        Ok(started.body["call_id"]
            .as_str()
            .context("call_id")?
            .to_string())
    }

    /// `user` joins call `call` of `room`.
    pub async fn join_call(&self, user: &User, room: &str, call: &str) -> anyhow::Result<()> {
        let joined = self
            .call(
                Method::POST,
                &format!("/v1/rooms/{room}/calls/{call}/join"),
                Some(&user.access_token),
                None,
            )
            .await?;
        if joined.status != StatusCode::OK {
            bail!("join a call: {} {}", joined.status, joined.body);
        }
        Ok(())
    }

    /// `owner` gives `user` the `role` in `room` (`PUT .../members/{user}/role`).
    pub async fn set_role(
        &self,
        owner: &User,
        room: &str,
        user: &User,
        role: &str,
    ) -> anyhow::Result<Answer> {
        self.call(
            Method::PUT,
            &format!("/v1/rooms/{room}/members/{}/role", user.user_id),
            Some(&owner.access_token),
            Some(json!({"role": role})),
        )
        .await
    }

    /// `by` bans `user` from `room` (`POST .../bans`).
    pub async fn ban(&self, by: &User, room: &str, user: &User) -> anyhow::Result<Answer> {
        self.call(
            Method::POST,
            &format!("/v1/rooms/{room}/bans"),
            Some(&by.access_token),
            Some(json!({"user_id": user.user_id})),
        )
        .await
    }
}
