//! A participant whose sockets all dropped, and did not come back within the presence grace,
//! leaves the call: the presence system writes them `offline` (`chat.presence-events`), the
//! follower hands that here, and each call they are still in gets `CallLeft` `disconnected`
//! from the commands tier (an internal request, `platform::internal`), which ends the call
//! `disconnected` if nobody is left. A page that reconnects within the grace (another node, a
//! node restart) never goes offline and stays in its call.

use platform::internal::InternalSecret;
use serde_json::json;

use crate::calls::Calls;

pub struct Dropper {
    pub http: reqwest::Client,
    pub commands_url: String,
    /// Without it nobody is dropped (and the operator is told at start).
    pub secret: Option<InternalSecret>,
    pub calls: Calls,
}

/// Why a drop must be tried again.
#[derive(Debug, thiserror::Error)]
pub enum DropError {
    #[error(transparent)]
    State(#[from] crate::error::SignalingError),
    #[error("the commands tier did not take it: {0}")]
    Commands(String),
}

impl Dropper {
    /// Takes `user` out of every call they are still in.
    pub async fn offline(&self, user: &str) -> Result<usize, DropError> {
        let Some(secret) = &self.secret else {
            return Ok(0);
        };
        let mut dropped = 0;
        for call_id in self.calls.of_user(user).await? {
            let view = self.calls.get(&call_id).await?;
            let Some(call) = view.filter(|c| !c.ended && c.participants.contains(user)) else {
                self.calls.forget(user, &call_id).await?;
                continue;
            };
            let response = self
                .http
                .post(format!(
                    "{}/internal/rooms/{}/calls/{call_id}/drop",
                    self.commands_url.trim_end_matches('/'),
                    call.room_id
                ))
                .header(reqwest::header::AUTHORIZATION, secret.header_value())
                .json(&json!({"user_id": user}))
                .send()
                .await
                .map_err(|e| DropError::Commands(e.to_string()))?;
            let status = response.status();
            if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                return Err(DropError::Commands(status.to_string()));
            }
            if status.is_success() {
                dropped += 1;
            } else {
                // Nothing a retry would change (the call ended meanwhile, say).
                tracing::warn!(user, call = %call_id, %status, "a disconnected participant's drop was refused");
            }
        }
        Ok(dropped)
    }
}
