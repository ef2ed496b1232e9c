//! Who may subscribe to a room: the read API decides (members always, visitors of public
//! rooms unless banned, a private room is invisible), asked with the caller's own token so the
//! answer is exactly what an HTTP read would get. What the log showed since this node started
//! decides first (see `Hub::verdict`), because the read model may not have projected it yet.

use std::time::Duration;

use crate::error::FanoutError;
use crate::hub::{Hub, Verdict};
use crate::tail::Watermarks;

pub struct Access {
    http: reqwest::Client,
    query_url: String,
    /// For the log's end when the read API does not know a room yet.
    watermarks: Watermarks,
    partitions: i32,
}

impl Access {
    pub fn new(
        http: reqwest::Client,
        query_url: &str,
        brokers: &str,
        partitions: i32,
    ) -> Result<Self, FanoutError> {
        Ok(Self {
            http,
            query_url: query_url.trim_end_matches('/').to_string(),
            watermarks: Watermarks::new(brokers)?,
            partitions,
        })
    }

    /// Waits (bounded) until the tail has handed the hub everything the log holds now for the
    /// room's partition. A room created or joined a moment ago is then known to the hub.
    pub async fn catch_up(&self, hub: &Hub, room_id: &str) -> Result<(), FanoutError> {
        let partition = schemas::partition::partition_for(room_id, self.partitions);
        let high = self.watermarks.high(partition).await?;
        hub.reach(partition, high, Duration::from_secs(5)).await
    }

    pub async fn check(
        &self,
        hub: &Hub,
        room_id: &str,
        user_id: &str,
        token: &str,
    ) -> Result<(), FanoutError> {
        match hub.verdict(room_id, user_id) {
            Some(Verdict::Allow) => return Ok(()),
            Some(Verdict::Banned) => {
                return Err(FanoutError::Forbidden(
                    "you are banned from this room".into(),
                ));
            }
            Some(Verdict::Invisible) => return Err(FanoutError::NotFound),
            None => {}
        }
        let response = self
            .http
            .get(format!("{}/v1/rooms/{room_id}", self.query_url))
            .bearer_auth(token)
            .send()
            .await?;
        let status = response.status().as_u16();
        match status {
            200 => Ok(()),
            // Maybe only not projected yet: what the log says decides.
            404 => {
                self.catch_up(hub, room_id).await?;
                match hub.verdict(room_id, user_id) {
                    Some(Verdict::Allow) => Ok(()),
                    Some(Verdict::Banned) => Err(FanoutError::Forbidden(
                        "you are banned from this room".into(),
                    )),
                    _ => Err(FanoutError::NotFound),
                }
            }
            _ => {
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                let code = body["error"]["code"].as_str().unwrap_or("upstream_error");
                let message = body["error"]["message"]
                    .as_str()
                    .unwrap_or("the read API refused")
                    .to_string();
                match status {
                    403 => Err(FanoutError::Forbidden(message)),
                    401 => Err(FanoutError::Upstream {
                        status,
                        code: code.to_string(),
                        message,
                    }),
                    _ => Err(FanoutError::Unavailable(format!(
                        "the read API answered {status}: {message}"
                    ))),
                }
            }
        }
    }
}
