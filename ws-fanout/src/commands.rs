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

/// A call lifecycle command of the socket (`call.start`, `call.join`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallAction {
    Start,
    Join,
    Leave,
    Decline,
    End,
}

impl CallAction {
    pub fn name(self) -> &'static str {
        match self {
            CallAction::Start => "start",
            CallAction::Join => "join",
            CallAction::Leave => "leave",
            CallAction::Decline => "decline",
            CallAction::End => "end",
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

    /// `call_id` names the call for every action but `Start`; `media` and `busy` are the
    /// bodies of start and decline.
    pub async fn call(
        &self,
        token: &str,
        room_id: &str,
        action: CallAction,
        call_id: Option<&str>,
        media: Option<&str>,
        busy: bool,
    ) -> Result<CallOutcome, Refused> {
        let (path, body) = match (action, call_id) {
            (CallAction::Start, _) => (
                format!("{room_id}/calls"),
                serde_json::json!({"media": media.unwrap_or("video")}),
            ),
            (CallAction::Decline, Some(call)) => (
                format!("{room_id}/calls/{call}/decline"),
                serde_json::json!({"busy": busy}),
            ),
            (action, Some(call)) => (
                format!("{room_id}/calls/{call}/{}", action.name()),
                serde_json::json!({}),
            ),
            (_, None) => {
                return Err(Refused::Api {
                    code: "invalid_frame".into(),
                    message: "call_id is required".into(),
                });
            }
        };
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
