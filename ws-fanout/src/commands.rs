//! The commands tier as this node uses it: a socket's `send` is the HTTP post of API.md, made
//! with the sender's own token, so it gets exactly the write API's validation, idempotency and
//! rate limits. Typed here once, so a change of that contract shows up in one place.

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

/// Why a post was not accepted: the write API's own refusal, or no answer from it.
#[derive(Debug)]
pub enum Refused {
    Api { code: String, message: String },
    Unreachable(String),
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
        let response = self
            .http
            .post(format!("{}/v1/rooms/{room_id}/messages", self.base))
            .bearer_auth(token)
            .json(&PostBody {
                client_msg_id,
                content,
                reply_to,
            })
            .send()
            .await
            .map_err(|e| Refused::Unreachable(format!("the write API is unreachable: {e}")))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Refused::Unreachable(format!("the write API broke off: {e}")))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| Refused::Api {
                code: "internal".into(),
                message: format!("the write API's answer is not a post outcome: {e}"),
            });
        }
        Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => Refused::Api {
                code: body.error.code,
                message: body.error.message,
            },
            Err(_) => Refused::Api {
                code: "upstream_error".into(),
                message: format!("the write API refused ({status})"),
            },
        })
    }
}
