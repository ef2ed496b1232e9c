//! Group calls through Janus (VideoRoom). A call whose `CallStarted` says `sfu` gets a Janus
//! room, made at its first publish and destroyed when the call ends; each participant
//! publishes their camera and microphone into it over one connection and receives each other
//! participant's over one connection per publisher.
//!
//! Clients never reach Janus: they send their SDP to the routes below, and signaling makes the
//! Janus requests for them (the API secret and the room's secret are known to Janus and this
//! tier only). A participant is admitted with a token of their own (derived from the secret,
//! the call and the user), added to the room's allow-list when they first publish or subscribe
//! and removed when they leave; a participant who leaves, is banned or drops has their Janus
//! sessions destroyed and is kicked, which cuts their media at once. What signaling made in
//! Janus for a call is kept in Redis (`sfu:{call}`), so any instance can serve a participant
//! and the one following the call's partition cleans up.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use redis::aio::ConnectionManager;
use serde_json::{Value, json};
use sha1::Sha1;
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

pub mod routes;

use crate::calls::Calls;
use crate::error::SignalingError;
use crate::janus::{Handle, Janus, JanusError, codes, done_unless_gone};
use crate::metrics::Metrics;

/// How long a negotiation may take in Janus (its ICE gathering is on a local interface).
const NEGOTIATION: Duration = Duration::from_secs(10);

/// Publishers a room takes: a call is a conversation, not a broadcast.
pub const MAX_PUBLISHERS: u32 = 16;

/// The state of an ended call's room outlives it a day (then Redis forgets it).
const STATE_TTL_SECS: u64 = 24 * 3600;

pub struct Sfu {
    janus: Janus,
    redis: ConnectionManager,
    prefix: String,
    /// The session this instance manages rooms through (made on first use, again if Janus
    /// forgot it).
    control: Mutex<Option<Handle>>,
    /// Per publisher, bits per second Janus asks it to stay under (REMB).
    bitrate: u32,
}

/// What a publish answers: Janus's SDP answer and who else publishes already.
pub struct Published {
    pub sdp: String,
    pub publishers: Vec<String>,
}

impl Sfu {
    pub fn new(janus: Janus, redis: ConnectionManager, prefix: &str, bitrate: u32) -> Self {
        Self {
            janus,
            redis,
            prefix: prefix.to_string(),
            control: Mutex::new(None),
            bitrate,
        }
    }

    fn key(&self, call_id: &str) -> String {
        format!("{}sfu:{{{call_id}}}", self.prefix)
    }

    fn sign(&self, what: &str) -> String {
        let mut mac =
            Hmac::<Sha1>::new_from_slice(self.janus.secret().as_bytes()).expect("any key length");
        mac.update(what.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// The room's secret: needed to change its allow-list, kick and destroy it.
    fn room_secret(&self, call_id: &str) -> String {
        self.sign(&format!("room/{call_id}"))
    }

    /// `user`'s admission to the call's room.
    fn token(&self, call_id: &str, user: &str) -> String {
        self.sign(&format!("token/{call_id}/{user}"))
    }

    /// A room-management request through the control session, made again once if Janus lost
    /// that session (a Janus restart).
    async fn manage(&self, body: Value) -> Result<Value, JanusError> {
        for attempt in 0..2 {
            let handle = {
                let mut control = self.control.lock().await;
                match *control {
                    Some(h) => h,
                    None => {
                        let h = self.janus.attach().await?;
                        *control = Some(h);
                        h
                    }
                }
            };
            match self.janus.request(handle, body.clone()).await {
                Err(e)
                    if attempt == 0
                        && matches!(
                            e.code(),
                            Some(codes::SESSION_NOT_FOUND | codes::HANDLE_NOT_FOUND)
                        ) =>
                {
                    *self.control.lock().await = None;
                }
                other => return other,
            }
        }
        unreachable!("the second attempt returns")
    }

    /// Makes the call's room if it is not there yet, and lets `user` in.
    async fn admit(&self, call_id: &str, user: &str) -> Result<(), SignalingError> {
        let mut redis = self.redis.clone();
        let made: bool = redis::cmd("HEXISTS")
            .arg(self.key(call_id))
            .arg("room")
            .query_async(&mut redis)
            .await?;
        if !made {
            self.create_room(call_id).await?;
        }
        match self.allowed(call_id, user, "add").await {
            // Janus keeps no rooms across a restart: the room is made again.
            Err(e) if made && e.code() == Some(codes::NO_SUCH_ROOM) => {
                self.create_room(call_id).await?;
                self.allowed(call_id, user, "add").await?;
            }
            other => other?,
        }
        Ok(())
    }

    async fn create_room(&self, call_id: &str) -> Result<(), SignalingError> {
        let created = self
            .manage(json!({
                "request": "create",
                "room": call_id,
                "admin_key": self.janus.secret(),
                "secret": self.room_secret(call_id),
                "description": format!("call {call_id}"),
                "is_private": true,
                "publishers": MAX_PUBLISHERS,
                "bitrate": self.bitrate,
                "audiocodec": "opus",
                "videocodec": "vp8",
                "allowed": [],
                "permanent": false,
            }))
            .await;
        done_unless_gone(created, &[codes::ROOM_EXISTS])?;
        let key = self.key(call_id);
        let mut redis = self.redis.clone();
        redis::pipe()
            .cmd("HSET")
            .arg(&key)
            .arg("room")
            .arg(1)
            .cmd("EXPIRE")
            .arg(&key)
            .arg(STATE_TTL_SECS)
            .query_async::<()>(&mut redis)
            .await?;
        Ok(())
    }

    /// Puts `user`'s token on (`add`) or off (`remove`) the room's allow-list.
    async fn allowed(&self, call_id: &str, user: &str, action: &str) -> Result<(), JanusError> {
        self.manage(json!({
            "request": "allowed",
            "room": call_id,
            "secret": self.room_secret(call_id),
            "action": action,
            "allowed": [self.token(call_id, user)],
        }))
        .await
        .map(|_| ())
    }

    /// Everything signaling made in Janus for the call (field -> value).
    async fn state(&self, call_id: &str) -> Result<Vec<(String, String)>, SignalingError> {
        let mut redis = self.redis.clone();
        Ok(redis::cmd("HGETALL")
            .arg(self.key(call_id))
            .query_async(&mut redis)
            .await?)
    }

    /// The handle `field` of the call's state holds, if any.
    async fn handle_at(
        &self,
        call_id: &str,
        field: &str,
    ) -> Result<Option<Handle>, SignalingError> {
        let mut redis = self.redis.clone();
        let raw: Option<String> = redis::cmd("HGET")
            .arg(self.key(call_id))
            .arg(field)
            .query_async(&mut redis)
            .await?;
        Ok(raw.as_deref().and_then(Handle::from_field))
    }

    /// Replaces whatever `field` of the call's state held with a fresh handle.
    async fn fresh_handle(&self, call_id: &str, field: &str) -> Result<Handle, SignalingError> {
        if let Some(old) = self.handle_at(call_id, field).await? {
            self.janus.destroy(old.session).await?;
        }
        let handle = self.janus.attach().await?;
        let mut redis = self.redis.clone();
        redis::cmd("HSET")
            .arg(self.key(call_id))
            .arg(field)
            .arg(handle.to_field())
            .query_async::<()>(&mut redis)
            .await?;
        Ok(handle)
    }

    /// `user` publishes with `offer`; Janus's answer and the call's other publishers.
    pub async fn publish(
        &self,
        call_id: &str,
        user: &str,
        offer: String,
    ) -> Result<Published, SignalingError> {
        self.admit(call_id, user).await?;
        let join = json!({
            "request": "joinandconfigure",
            "room": call_id,
            "ptype": "publisher",
            "id": user,
            "display": user,
            "token": self.token(call_id, user),
            "audio": true,
            "video": true,
            "data": true,
            "bitrate": self.bitrate,
        });
        let jsep = json!({"type": "offer", "sdp": offer});
        let mut attempt = 0;
        let field = publisher_field(user);
        let reply = loop {
            let handle = self.fresh_handle(call_id, &field).await?;
            match self
                .janus
                .negotiate(handle, join.clone(), Some(jsep.clone()), NEGOTIATION)
                .await
            {
                Ok(reply) => break reply,
                // Still in the room under that id (a page that reloaded): out with the old one.
                Err(e) if attempt == 0 && e.code() == Some(codes::ID_EXISTS) => {
                    self.kick(call_id, user).await?;
                    attempt += 1;
                }
                Err(e) => {
                    self.forget(call_id, &field, handle).await?;
                    return Err(e.into());
                }
            }
        };
        let sdp = sdp_of(&reply.jsep)?;
        // Marked before the caller reads who to tell, and read after the caller's join was
        // applied: of two participants publishing at once, each hears of the other one way
        // or the other (Janus's own list leaves out publishers whose media is not up yet).
        let key = self.key(call_id);
        let mut redis = self.redis.clone();
        let (_, fields): ((), Vec<String>) = redis::pipe()
            .cmd("HSET")
            .arg(&key)
            .arg(live_field(user))
            .arg(1)
            .cmd("HKEYS")
            .arg(&key)
            .query_async(&mut redis)
            .await?;
        let publishers = fields
            .iter()
            .filter_map(|f| f.strip_prefix("live:"))
            .filter(|id| *id != user)
            .map(str::to_string)
            .collect();
        Ok(Published { sdp, publishers })
    }

    /// `user` asks for `feed`'s media: Janus's offer for it.
    pub async fn subscribe(
        &self,
        call_id: &str,
        user: &str,
        feed: &str,
    ) -> Result<String, SignalingError> {
        self.admit(call_id, user).await?;
        let field = subscriber_field(user, feed);
        let handle = self.fresh_handle(call_id, &field).await?;
        let join = json!({
            "request": "join",
            "room": call_id,
            "ptype": "subscriber",
            "streams": [{"feed": feed}],
            "token": self.token(call_id, user),
            "use_msid": true,
        });
        // Janus offers a publisher's media only once its connection is up, a moment after
        // the publish answered (and was announced): a feed that published waits that moment.
        let deadline = tokio::time::Instant::now() + NEGOTIATION;
        let reply = loop {
            let reply = self
                .janus
                .negotiate(handle, join.clone(), None, NEGOTIATION)
                .await;
            match reply {
                Err(e)
                    if e.code() == Some(codes::NO_SUCH_FEED)
                        && tokio::time::Instant::now() < deadline
                        && self.publishes(call_id, feed).await? =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => break other,
            }
        };
        match reply {
            Ok(reply) => sdp_of(&reply.jsep),
            Err(e) => {
                self.forget(call_id, &field, handle).await?;
                Err(e.into())
            }
        }
    }

    /// Whether `user`'s publish into the call went through.
    async fn publishes(&self, call_id: &str, user: &str) -> Result<bool, SignalingError> {
        let mut redis = self.redis.clone();
        Ok(redis::cmd("HEXISTS")
            .arg(self.key(call_id))
            .arg(live_field(user))
            .query_async(&mut redis)
            .await?)
    }

    /// Drops a handle whose request failed, so nothing later takes it for a live one.
    async fn forget(
        &self,
        call_id: &str,
        field: &str,
        handle: Handle,
    ) -> Result<(), SignalingError> {
        self.janus.destroy(handle.session).await?;
        let mut redis = self.redis.clone();
        let mut forget = redis::cmd("HDEL");
        forget.arg(self.key(call_id)).arg(field);
        if let Some(user) = field.strip_prefix("pub:") {
            forget.arg(live_field(user));
        }
        forget.query_async::<()>(&mut redis).await?;
        Ok(())
    }

    /// `user`'s answer to the offer for `feed`: the media starts flowing.
    pub async fn start(
        &self,
        call_id: &str,
        user: &str,
        feed: &str,
        answer: String,
    ) -> Result<(), SignalingError> {
        let handle = self
            .handle_at(call_id, &subscriber_field(user, feed))
            .await?
            .ok_or_else(|| {
                SignalingError::Conflict(
                    "not_subscribed",
                    "subscribe to this feed first; its offer is what this answers".into(),
                )
            })?;
        self.janus
            .negotiate(
                handle,
                json!({"request": "start"}),
                Some(json!({"type": "answer", "sdp": answer})),
                NEGOTIATION,
            )
            .await?;
        Ok(())
    }

    async fn kick(&self, call_id: &str, user: &str) -> Result<(), JanusError> {
        let kicked = self
            .manage(json!({
                "request": "kick",
                "room": call_id,
                "secret": self.room_secret(call_id),
                "id": user,
            }))
            .await;
        done_unless_gone(
            kicked,
            &[
                codes::NO_SUCH_ROOM,
                codes::NO_SUCH_FEED,
                codes::NO_SUCH_USER,
            ],
        )
    }

    /// `user` left the call (hung up, banned, dropped): their sessions go, and they are out
    /// of the room and its allow-list. Nothing to do for a call that never had a room.
    pub async fn release(&self, call_id: &str, user: &str) -> Result<(), SignalingError> {
        let state = self.state(call_id).await?;
        if state.is_empty() {
            return Ok(());
        }
        let (publisher, live) = (publisher_field(user), live_field(user));
        let (subscriptions, to_them) = (subscriber_field(user, ""), format!(">{user}"));
        let theirs: Vec<(String, String)> = state
            .into_iter()
            .filter(|(field, _)| {
                *field == publisher
                    || *field == live
                    || field.starts_with(&subscriptions)
                    || field.ends_with(&to_them)
            })
            .collect();
        for (_, handle) in &theirs {
            if let Some(h) = Handle::from_field(handle) {
                self.janus.destroy(h.session).await?;
            }
        }
        if !theirs.is_empty() {
            // A retry after a failure above destroys again what is gone: Janus says so, fine.
            let mut redis = self.redis.clone();
            let mut forget = redis::cmd("HDEL");
            forget.arg(self.key(call_id));
            for (field, _) in &theirs {
                forget.arg(field);
            }
            forget.query_async::<()>(&mut redis).await?;
        }
        self.kick(call_id, user).await?;
        let removed = self.allowed(call_id, user, "remove").await;
        Ok(done_unless_gone(removed, &[codes::NO_SUCH_ROOM])?)
    }

    /// The call ended: every session signaling made for it goes, and so does its room.
    pub async fn close(&self, call_id: &str) -> Result<(), SignalingError> {
        let state = self.state(call_id).await?;
        if state.is_empty() {
            return Ok(());
        }
        for (_, handle) in &state {
            if let Some(h) = Handle::from_field(handle) {
                self.janus.destroy(h.session).await?;
            }
        }
        let destroyed = self
            .manage(json!({
                "request": "destroy",
                "room": call_id,
                "secret": self.room_secret(call_id),
            }))
            .await;
        done_unless_gone(destroyed, &[codes::NO_SUCH_ROOM])?;
        let mut redis = self.redis.clone();
        redis::cmd("DEL")
            .arg(self.key(call_id))
            .query_async::<()>(&mut redis)
            .await?;
        Ok(())
    }
}

/// What the log says must go from Janus: a participant's sessions, or a whole call's.
#[derive(Debug)]
pub enum Cleanup {
    Left { call_id: String, user: String },
    Ended { call_id: String },
}

impl Cleanup {
    /// The cleanup a call event asks for, if any.
    pub fn after(event: &schemas::DomainEvent) -> Option<Self> {
        match event {
            schemas::DomainEvent::CallLeft(e) => Some(Cleanup::Left {
                call_id: e.call_id.clone(),
                user: e.member_id.clone(),
            }),
            schemas::DomainEvent::CallEnded(e) => Some(Cleanup::Ended {
                call_id: e.call_id.clone(),
            }),
            _ => None,
        }
    }
}

/// Carries out the cleanups the follower hands over, in order, each retried until Janus and
/// Redis take it (a Janus that blinks delays a cleanup; it never skips one). Apart from the
/// follower, so a slow Janus never holds up the call state.
pub async fn janitor(
    sfu: Arc<Sfu>,
    calls: Calls,
    metrics: Metrics,
    mut work: mpsc::UnboundedReceiver<Cleanup>,
    stop: CancellationToken,
) {
    loop {
        let job = tokio::select! {
            _ = stop.cancelled() => return,
            job = work.recv() => match job { Some(job) => job, None => return },
        };
        let done = platform::retry::until_ok("clean up after a call in Janus", &stop, || {
            let (sfu, calls, metrics, job) = (&sfu, &calls, &metrics, &job);
            async move {
                let result = match job {
                    Cleanup::Left { call_id, user } => {
                        // Back in the call already (a rejoin read before this): keep it.
                        let view = calls.get(call_id).await?;
                        if view.is_some_and(|c| !c.ended && c.participants.contains(user)) {
                            return Ok(());
                        }
                        sfu.release(call_id, user).await
                    }
                    Cleanup::Ended { call_id } => sfu.close(call_id).await,
                };
                if result.is_err() {
                    metrics.janus_errors.inc();
                }
                result
            }
        })
        .await;
        if done.is_none() {
            return;
        }
        metrics.sfu_cleanups.inc();
    }
}

fn publisher_field(user: &str) -> String {
    format!("pub:{user}")
}

/// Set once `user`'s publish went through (their feed can be subscribed to).
fn live_field(user: &str) -> String {
    format!("live:{user}")
}

/// `sub:<subscriber>><feed>`: user ids are UUIDs, so neither `:` nor `>` occurs in them.
fn subscriber_field(user: &str, feed: &str) -> String {
    format!("sub:{user}>{feed}")
}

fn sdp_of(jsep: &Option<Value>) -> Result<String, SignalingError> {
    jsep.as_ref()
        .and_then(|j| j["sdp"].as_str())
        .map(str::to_string)
        .ok_or_else(|| JanusError::Unexpected("no SDP in Janus's answer".into()).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_fields_are_told_apart_from_others() {
        let (ann, bob) = ("a1", "b2");
        assert!(subscriber_field(ann, bob).starts_with(&subscriber_field(ann, "")));
        assert!(subscriber_field(bob, ann).ends_with(&format!(">{ann}")));
        assert!(!subscriber_field(bob, ann).starts_with(&subscriber_field(ann, "")));
        assert_ne!(publisher_field(ann), publisher_field(bob));
    }
}
