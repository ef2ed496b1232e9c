//! Open sockets by session, and the revocations that end them.
//!
//! A logout or a refresh-token reuse revokes a session in the commands tier's PostgreSQL, which
//! relays `SessionRevoked` to `chat.user-events` (its outbox). Every node follows that topic
//! from its end and closes the session's sockets as soon as the event arrives (well within a
//! second), whether or not Redis is up; each socket also re-verifies its token once a minute.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use schemas::{DomainEvent, EventCodec};
use tokio_util::sync::CancellationToken;

use crate::error::FanoutError;

const USER_EVENTS: &str = schemas::topics::USER_EVENTS;

/// Sessions with sockets on this node: a token cancelled when the session is revoked.
#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, (CancellationToken, usize)>>,
}

/// One socket's watch on its session, given back when dropped.
pub struct Watch {
    sessions: Arc<Sessions>,
    sid: String,
    pub revoked: CancellationToken,
}

impl Sessions {
    pub fn watch(self: &Arc<Self>, sid: &str) -> Watch {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let entry = open
            .entry(sid.to_string())
            .or_insert_with(|| (CancellationToken::new(), 0));
        entry.1 += 1;
        Watch {
            sessions: self.clone(),
            sid: sid.to_string(),
            revoked: entry.0.clone(),
        }
    }

    /// Ends the session's sockets here; false when it has none.
    pub fn revoke(&self, sid: &str) -> bool {
        let removed = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(sid);
        match removed {
            Some((token, _)) => {
                token.cancel();
                true
            }
            None => false,
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut open = self.sessions.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = open.get_mut(&self.sid) {
            entry.1 = entry.1.saturating_sub(1);
            if entry.1 == 0 {
                open.remove(&self.sid);
            }
        }
    }
}

/// Follows `chat.user-events` from its end until `stop`, revoking sessions as their
/// `SessionRevoked` events arrive.
pub async fn follow_revocations(
    brokers: String,
    codec: Arc<EventCodec>,
    sessions: Arc<Sessions>,
    stop: CancellationToken,
) {
    let consumer = loop {
        match open(&brokers).await {
            Ok(consumer) => break consumer,
            Err(e) => {
                tracing::warn!(error = %e, "cannot follow session revocations yet; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => return,
            m = consumer.recv() => m,
        };
        let payload = match &message {
            Ok(m) => m.payload().map(<[u8]>::to_vec),
            Err(e) => {
                tracing::debug!(error = %e, "user events: broker error");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let Some(payload) = payload else { continue };
        // Other user events (registrations, profile changes) are none of this node's business;
        // an undecodable one cannot be a revocation this node could act on.
        let decoded = platform::retry::while_transient(
            "registry",
            || codec.decode(&payload),
            schemas::SchemaError::is_transient,
        )
        .await;
        if let Ok(DomainEvent::SessionRevoked(e)) = decoded
            && sessions.revoke(&e.session_id)
        {
            tracing::info!(session = %e.session_id, reason = %e.reason, "revoked session's sockets closed");
        }
    }
}

async fn open(brokers: &str) -> Result<StreamConsumer, FanoutError> {
    let broker = |e: rdkafka::error::KafkaError| FanoutError::Unavailable(format!("broker: {e}"));
    let client: StreamConsumer = schemas::kafka::reader_config(brokers)
        .set(
            "group.id",
            format!("chat-fanout-sessions-{}", uuid::Uuid::now_v7()),
        )
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()
        .map_err(broker)?;
    let partitions = {
        let brokers = brokers.to_string();
        tokio::task::spawn_blocking(move || {
            let probe: rdkafka::consumer::BaseConsumer = schemas::kafka::reader_config(&brokers)
                .create()
                .map_err(broker)?;
            schemas::kafka::partition_count(&probe, USER_EVENTS, Duration::from_secs(10))
                .map_err(|e| FanoutError::Unavailable(format!("broker: {e}")))
        })
        .await
        .map_err(|e| FanoutError::Internal(e.to_string()))??
    };
    if partitions == 0 {
        return Err(FanoutError::Unavailable(format!(
            "topic {USER_EVENTS} does not exist"
        )));
    }
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment
            .add_partition_offset(USER_EVENTS, p, Offset::End)
            .map_err(broker)?;
    }
    client.assign(&assignment).map_err(broker)?;
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revocation_reaches_every_socket_of_the_session_and_watches_are_given_back() {
        let sessions = Arc::new(Sessions::default());
        let (a, b) = (sessions.watch("s1"), sessions.watch("s1"));
        let other = sessions.watch("s2");
        assert!(sessions.revoke("s1"));
        assert!(a.revoked.is_cancelled() && b.revoked.is_cancelled());
        assert!(!other.revoked.is_cancelled());
        drop(other);
        assert!(!sessions.revoke("s2"), "no socket of s2 left");
    }
}
