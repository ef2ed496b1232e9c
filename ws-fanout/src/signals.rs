//! Call signals of this node's sockets. A socket's `call.signal` frames go to the signaling
//! tier one after another, in the order the client sent them (a candidate must not overtake
//! the offer it belongs to), as the HTTP relay request of API.md made with the socket's token;
//! a refusal comes back to the socket as an error frame naming the frame's `ref`. Signals for
//! this node's users arrive on the call signal channel (`crate::fast`) and go to each of the
//! recipient's sockets (`crate::limits::SocketCounts::deliver`).

use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::commands::{Refused, answer};
use crate::hub::Outlet;
use crate::line::Frame;

/// Signals one socket may have waiting for the relay; past it the socket is told to slow down.
pub const QUEUED_SIGNALS: usize = 64;

#[derive(Clone)]
pub struct SignalingClient {
    http: reqwest::Client,
    base: String,
}

impl SignalingClient {
    pub fn new(http: reqwest::Client, base: &str) -> Self {
        Self {
            http,
            base: base.trim_end_matches('/').to_string(),
        }
    }

    async fn signal(
        &self,
        token: &str,
        call_id: &str,
        to: &str,
        payload: &Value,
    ) -> Result<Value, Refused> {
        let response = self
            .http
            .post(format!("{}/v1/calls/{call_id}/signal", self.base))
            .bearer_auth(token)
            .json(&json!({"to": to, "payload": payload}))
            .send()
            .await
            .map_err(|e| Refused::Unreachable(format!("signaling is unreachable: {e}")))?;
        answer(response).await
    }
}

pub struct Pending {
    pub call_id: String,
    pub to: String,
    pub payload: Value,
    pub reference: Option<String>,
}

/// One socket's queue of signals, forwarded in order by a task that ends with the socket.
pub struct Outgoing {
    tx: mpsc::Sender<Pending>,
}

impl Outgoing {
    pub fn start(client: SignalingClient, token: String, outlet: Outlet) -> Self {
        let (tx, mut rx) = mpsc::channel::<Pending>(QUEUED_SIGNALS);
        tokio::spawn(async move {
            while let Some(p) = rx.recv().await {
                if let Err(refused) = client.signal(&token, &p.call_id, &p.to, &p.payload).await {
                    outlet.push_ephemeral(Frame::from(refused.frame(p.reference.as_deref())));
                }
            }
        });
        Self { tx }
    }

    /// Queues a signal; false when the socket already has [`QUEUED_SIGNALS`] waiting.
    pub fn queue(&self, pending: Pending) -> bool {
        self.tx.try_send(pending).is_ok()
    }
}
