//! The commands tier as this node uses it: a socket's `send` is the HTTP post of API.md, and
//! its `call.*` lifecycle frames the call commands, made with the sender's own token, so they
//! get exactly the write API's validation, idempotency and rate limits. Typed here once, so a
//! change of that contract shows up in one place.

use platform::error::ErrorBody;
use serde::{Deserialize, Serialize};

#[derive(Clone)]
pub struct CommandsClient {
    http: reqwest::Client,
    base: String,
}

#[derive(Serialize)]
struct PostBody<'a> {
    client_msg_id: &'a str,
    content: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_to: Option<&'a str>,
}

/// What the write API answers a post it accepted (or had accepted: a retry).
#[derive(Debug, Deserialize)]
pub struct Posted {
    pub message_id: String,
    pub seq: i64,
}

/// What the write API answers a call command.
#[derive(Debug, Deserialize)]
pub struct CallOutcome {
    pub call_id: Option<String>,
    pub seq: Option<i64>,
}

/// A call lifecycle command of the socket (`call.start`, `call.join`, ...), with what each
/// one carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallCommand {
    Start { media: Option<String> },
    Join { call_id: String },
    Leave { call_id: String },
    Decline { call_id: String, busy: bool },
    End { call_id: String },
}

impl CallCommand {
    pub fn name(&self) -> &'static str {
        match self {
            CallCommand::Start { .. } => "start",
            CallCommand::Join { .. } => "join",
            CallCommand::Leave { .. } => "leave",
            CallCommand::Decline { .. } => "decline",
            CallCommand::End { .. } => "end",
        }
    }

    /// The call it is about (none yet for a start).
    pub fn call_id(&self) -> Option<&str> {
        match self {
            CallCommand::Start { .. } => None,
            CallCommand::Join { call_id }
            | CallCommand::Leave { call_id }
            | CallCommand::Decline { call_id, .. }
            | CallCommand::End { call_id } => Some(call_id),
        }
    }

    /// Its path under `/v1/rooms/` and its body, as API.md has them.
    fn request(&self, room_id: &str) -> (String, serde_json::Value) {
        match self {
            CallCommand::Start { media } => (
                format!("{room_id}/calls"),
                serde_json::json!({"media": media.as_deref().unwrap_or("video")}),
            ),
            CallCommand::Decline { call_id, busy } => (
                format!("{room_id}/calls/{call_id}/decline"),
                serde_json::json!({"busy": busy}),
            ),
            CallCommand::Join { call_id }
            | CallCommand::Leave { call_id }
            | CallCommand::End { call_id } => (
                format!("{room_id}/calls/{call_id}/{}", self.name()),
                serde_json::json!({}),
            ),
        }
    }
}

/// Why a post was not accepted: the write API's own refusal, or no answer from it.
#[derive(Debug)]
pub enum Refused {
    Api { code: String, message: String },
    Unreachable(String),
}

impl Refused {
    /// The error frame that tells the socket (naming its `ref`).
    pub fn frame(self, reference: Option<&str>) -> String {
        match self {
            Refused::Api { code, message } => {
                crate::protocol::error_frame(&code, &message, reference)
            }
            Refused::Unreachable(message) => {
                crate::protocol::error_frame("unavailable", &message, reference)
            }
        }
    }
}

impl CommandsClient {
    pub fn new(http: reqwest::Client, base: &str) -> Self {
        Self {
            http,
            base: base.trim_end_matches('/').to_string(),
        }
    }

    pub async fn post(
        &self,
        token: &str,
        room_id: &str,
        client_msg_id: &str,
        content: &str,
        reply_to: Option<&str>,
    ) -> Result<Posted, Refused> {
        let body = PostBody {
            client_msg_id,
            content,
            reply_to,
        };
        self.request(token, &format!("{room_id}/messages"), &body)
            .await
    }

    pub async fn call(
        &self,
        token: &str,
        room_id: &str,
        command: &CallCommand,
    ) -> Result<CallOutcome, Refused> {
        let (path, body) = command.request(room_id);
        self.request(token, &path, &body).await
    }

    /// POSTs `body` to `/v1/rooms/<path>` with the caller's token.
    async fn request<T: serde::de::DeserializeOwned>(
        &self,
        token: &str,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, Refused> {
        let response = self
            .http
            .post(format!("{}/v1/rooms/{path}", self.base))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .map_err(|e| Refused::Unreachable(format!("the write API is unreachable: {e}")))?;
        answer(response).await
    }
}

/// The answer of an upstream tier: its success body, or its API error (or no answer).
pub(crate) async fn answer<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
) -> Result<T, Refused> {
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| Refused::Unreachable(format!("the upstream tier broke off: {e}")))?;
    if status.is_success() {
        return serde_json::from_slice(&bytes).map_err(|e| Refused::Api {
            code: "internal".into(),
            message: format!("the upstream answer is not what it promises: {e}"),
        });
    }
    Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(body) => Refused::Api {
            code: body.error.code,
            message: body.error.message,
        },
        Err(_) => Refused::Api {
            code: "upstream_error".into(),
            message: format!("the upstream tier refused ({status})"),
        },
    })
}
