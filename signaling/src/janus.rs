//! Janus's HTTP API (the VideoRoom plugin), as far as signaling uses it. Janus is reached only
//! by this tier: every request carries the API secret, which only Janus and signaling hold, so
//! a client can do in Janus exactly what the SFU routes (`crate::sfu`) do for it.
//!
//! Janus answers a plugin request that negotiates media (a publisher's offer, a subscriber's
//! answer) with an `ack` and sends the outcome later as an event of the session, fetched by
//! long-polling it. Each handle signaling makes sits alone in a session of its own, so the
//! events of one session belong to one request at a time and no waiter takes another's.

use std::time::Duration;

use serde_json::{Value, json};

/// The VideoRoom's error codes signaling tells apart (Janus's `videoroom.c`).
pub mod codes {
    /// `JANUS_VIDEOROOM_ERROR_NO_SUCH_ROOM`
    pub const NO_SUCH_ROOM: i64 = 426;
    /// `JANUS_VIDEOROOM_ERROR_ROOM_EXISTS`
    pub const ROOM_EXISTS: i64 = 427;
    /// `JANUS_VIDEOROOM_ERROR_NO_SUCH_FEED`
    pub const NO_SUCH_FEED: i64 = 428;
    /// `JANUS_VIDEOROOM_ERROR_NO_SUCH_USER` (a kick of someone not in the room)
    pub const NO_SUCH_USER: i64 = 430;
    /// `JANUS_VIDEOROOM_ERROR_ID_EXISTS`
    pub const ID_EXISTS: i64 = 436;
    /// Janus core: `JANUS_ERROR_JSEP_INVALID_SDP`
    pub const INVALID_SDP: i64 = 465;
    /// Janus core: `JANUS_ERROR_SESSION_NOT_FOUND`
    pub const SESSION_NOT_FOUND: i64 = 458;
    /// Janus core: `JANUS_ERROR_HANDLE_NOT_FOUND`
    pub const HANDLE_NOT_FOUND: i64 = 459;
}

#[derive(Debug, thiserror::Error)]
pub enum JanusError {
    #[error("Janus is unreachable: {0}")]
    Unreachable(#[from] reqwest::Error),
    /// Janus or its plugin refused the request (code, reason).
    #[error("Janus refused: {1} ({0})")]
    Refused(i64, String),
    #[error("Janus did not answer in time")]
    Timeout,
    /// This stack runs no Janus (no `CHAT_JANUS_SECRET_FILE`).
    #[error("this platform runs no SFU; group calls are unavailable")]
    NotConfigured,
    #[error("Janus answered something unexpected: {0}")]
    Unexpected(String),
}

impl JanusError {
    pub fn code(&self) -> Option<i64> {
        match self {
            JanusError::Refused(code, _) => Some(*code),
            _ => None,
        }
    }
}

/// A handle of the VideoRoom plugin in a session of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handle {
    pub session: u64,
    pub handle: u64,
}

impl Handle {
    /// Its URL path under the API's base.
    fn path(self) -> String {
        format!("/{}/{}", self.session, self.handle)
    }

    /// How it is kept in the call's SFU state (`session/handle`).
    pub fn to_field(self) -> String {
        format!("{}/{}", self.session, self.handle)
    }

    pub fn from_field(raw: &str) -> Option<Self> {
        let (session, handle) = raw.split_once('/')?;
        Some(Self {
            session: session.parse().ok()?,
            handle: handle.parse().ok()?,
        })
    }
}

/// What a plugin request came back with: the plugin's data and, for negotiations, Janus's SDP.
#[derive(Debug)]
pub struct Reply {
    pub data: Value,
    pub jsep: Option<Value>,
}

#[derive(Clone)]
pub struct Janus {
    http: reqwest::Client,
    url: String,
    secret: String,
}

/// A long poll returns after at most 30 s with a keepalive (Janus's own bound).
const POLL_TIMEOUT: Duration = Duration::from_secs(35);

impl Janus {
    pub fn new(url: &str, secret: String) -> Result<Self, reqwest::Error> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            url: url.trim_end_matches('/').to_string(),
            secret,
        })
    }

    /// The API secret, which VideoRoom also takes as its admin key (room creation).
    pub fn secret(&self) -> &str {
        &self.secret
    }

    async fn post(&self, path: &str, mut body: Value) -> Result<Value, JanusError> {
        body["apisecret"] = json!(self.secret);
        body["transaction"] = json!(uuid::Uuid::new_v4().simple().to_string());
        let answer: Value = self
            .http
            .post(format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await?
            .json()
            .await?;
        core_error(&answer)?;
        Ok(answer)
    }

    /// A new session with one VideoRoom handle in it.
    pub async fn attach(&self) -> Result<Handle, JanusError> {
        let created = self.post("", json!({"janus": "create"})).await?;
        let session = id_of(&created)?;
        let attached = self
            .post(
                &format!("/{session}"),
                json!({"janus": "attach", "plugin": "janus.plugin.videoroom"}),
            )
            .await;
        match attached.and_then(|a| id_of(&a)) {
            Ok(handle) => Ok(Handle { session, handle }),
            Err(e) => {
                let _ = self.destroy(session).await;
                Err(e)
            }
        }
    }

    /// Ends a session: its handle hangs up and leaves its room. Gone already counts as done.
    pub async fn destroy(&self, session: u64) -> Result<(), JanusError> {
        let destroyed = self
            .post(&format!("/{session}"), json!({"janus": "destroy"}))
            .await;
        done_unless_gone(destroyed, &[codes::SESSION_NOT_FOUND])
    }

    /// A request the plugin answers at once (room management).
    pub async fn request(&self, at: Handle, body: Value) -> Result<Value, JanusError> {
        let answer = self
            .post(&at.path(), json!({"janus": "message", "body": body}))
            .await?;
        plugin_data(&answer)
    }

    /// A request the plugin answers with an event (joins and negotiations), waited for up to
    /// `patience`.
    pub async fn negotiate(
        &self,
        at: Handle,
        body: Value,
        jsep: Option<Value>,
        patience: Duration,
    ) -> Result<Reply, JanusError> {
        let mut message = json!({"janus": "message", "body": body});
        if let Some(jsep) = jsep {
            message["jsep"] = jsep;
        }
        let answer = self.post(&at.path(), message).await?;
        let transaction = answer["transaction"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if answer["janus"] == "success" {
            return Ok(Reply {
                data: plugin_data(&answer)?,
                jsep: None,
            });
        }
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(JanusError::Timeout);
            }
            let event: Value = match self
                .http
                .get(format!(
                    "{}/{}?maxev=1&apisecret={}",
                    self.url, at.session, self.secret
                ))
                .timeout(left.min(POLL_TIMEOUT))
                .send()
                .await
            {
                Ok(response) => response.json().await?,
                Err(e) if e.is_timeout() => return Err(JanusError::Timeout),
                Err(e) => return Err(e.into()),
            };
            core_error(&event)?;
            // Other events of the session (keepalives, "webrtcup", publisher lists) are not
            // the answer.
            if event["janus"] == "event" && event["transaction"] == transaction.as_str() {
                return Ok(Reply {
                    data: plugin_data(&event)?,
                    jsep: event.get("jsep").cloned(),
                });
            }
        }
    }
}

fn id_of(answer: &Value) -> Result<u64, JanusError> {
    answer["data"]["id"]
        .as_u64()
        .ok_or_else(|| JanusError::Unexpected(answer.to_string()))
}

/// A refusal by Janus itself (`{"janus": "error", "error": {code, reason}}`).
fn core_error(answer: &Value) -> Result<(), JanusError> {
    if answer["janus"] == "error" {
        return Err(JanusError::Refused(
            answer["error"]["code"].as_i64().unwrap_or_default(),
            answer["error"]["reason"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        ));
    }
    Ok(())
}

/// The plugin's data in an answer or event, or its refusal.
fn plugin_data(message: &Value) -> Result<Value, JanusError> {
    let data = message["plugindata"]["data"].clone();
    plugin_error(&data)?;
    Ok(data)
}

/// Done, or refused only because what it was about is gone already (`gone`: those codes):
/// removing what is not there is done too.
pub fn done_unless_gone<T>(result: Result<T, JanusError>, gone: &[i64]) -> Result<(), JanusError> {
    match result {
        Err(e) if e.code().is_some_and(|c| gone.contains(&c)) => Ok(()),
        other => other.map(|_| ()),
    }
}

/// A refusal by the plugin (`{"videoroom": "event", "error_code", "error"}`).
fn plugin_error(data: &Value) -> Result<(), JanusError> {
    if let Some(code) = data["error_code"].as_i64() {
        return Err(JanusError::Refused(
            code,
            data["error"].as_str().unwrap_or_default().to_string(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_kept_as_session_slash_handle() {
        let h = Handle {
            session: 12,
            handle: 345,
        };
        assert_eq!(Handle::from_field(&h.to_field()), Some(h));
        assert_eq!(Handle::from_field("12"), None);
        assert_eq!(Handle::from_field("a/1"), None);
    }

    #[test]
    fn refusals_of_janus_and_of_the_plugin_are_errors() {
        let core = json!({"janus": "error", "error": {"code": 458, "reason": "No such session"}});
        assert_eq!(
            core_error(&core).unwrap_err().code(),
            Some(codes::SESSION_NOT_FOUND)
        );
        let plugin = json!({"videoroom": "event", "error_code": 428, "error": "No such feed"});
        assert_eq!(
            plugin_error(&plugin).unwrap_err().code(),
            Some(codes::NO_SUCH_FEED)
        );
        assert!(plugin_error(&json!({"videoroom": "joined"})).is_ok());
    }
}
