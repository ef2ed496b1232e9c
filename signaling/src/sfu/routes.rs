//! The routes through which a participant of a group call reaches the SFU: publish with an
//! offer, subscribe to another participant's feed (Janus offers), answer that offer. Each
//! checks that the caller is a participant of an SFU call, as the call state says.

use axum::Json;
use axum::extract::{Path, State};
use platform::auth::Caller;
use platform::json::Json as Body;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Sfu;
use crate::app::AppState;
use crate::calls::CallView;
use crate::error::SignalingError;
use crate::janus::{JanusError, codes};
use crate::relay::uuid;

#[derive(Deserialize, utoipa::ToSchema)]
pub struct PublishRequest {
    /// The SDP offer of the connection carrying the caller's microphone and camera, with its
    /// ICE candidates (SFU connections do not trickle).
    sdp: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Publishing {
    /// The SFU's SDP answer, with its candidates.
    sdp: String,
    /// The other participants publishing already: subscribe to each. Later ones are announced
    /// on the socket (`call.published`).
    publishers: Vec<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct SubscribeRequest {
    /// The participant whose media to receive.
    feed: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct SfuOffer {
    /// The SFU's SDP offer for that participant's media; answer it with `sfu/start`.
    sdp: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct StartRequest {
    feed: String,
    /// The SDP answer to the subscription's offer, with its candidates.
    sdp: String,
}

/// The caller's SFU call, once the call state shows them in it (a moment after the writer's
/// acknowledgement of their join).
async fn participant<'a>(
    app: &'a AppState,
    caller: &str,
    call_id: &str,
) -> Result<(&'a Sfu, CallView), SignalingError> {
    app.limits.sfu.check(caller)?;
    let sfu = app.sfu.as_deref().ok_or(JanusError::NotConfigured)?;
    let call = app
        .calls
        .as_participant(
            call_id,
            caller,
            |_| true,
            "join the call before sending media into it",
        )
        .await?;
    if !call.sfu {
        return Err(SignalingError::Conflict(
            "not_an_sfu_call",
            "this call is peer to peer: signal the other participant (call.signal)".into(),
        ));
    }
    Ok((sfu, call))
}

fn checked_sdp(sdp: &str, max_bytes: usize) -> Result<String, SignalingError> {
    if !sdp.starts_with("v=0") {
        return Err(SignalingError::Invalid("sdp is an SDP description".into()));
    }
    if sdp.len() > max_bytes {
        return Err(SignalingError::TooLarge(format!(
            "an SDP is at most {max_bytes} bytes; this one is {}",
            sdp.len()
        )));
    }
    Ok(sdp.to_string())
}

/// Counts and logs Janus failures (not its answers to a client's mistakes: a feed that does
/// not publish, an SDP it cannot take).
fn counted<T>(app: &AppState, result: Result<T, SignalingError>) -> Result<T, SignalingError> {
    if let Err(SignalingError::Sfu(e)) = &result
        && !matches!(e.code(), Some(codes::NO_SUCH_FEED | codes::INVALID_SDP))
    {
        app.metrics.janus_errors.inc();
        tracing::warn!(error = %e, "an SFU request failed");
    }
    result
}

#[utoipa::path(
    post,
    path = "/v1/calls/{call_id}/sfu/publish",
    tag = "calls",
    summary = "Send your microphone and camera into a group call (SDP offer in, the SFU's answer out)",
    params(("call_id" = String, Path, description = "the call")),
    request_body = PublishRequest,
    responses((status = 200, description = "the SFU's answer; the others publishing already", body = Publishing), platform::openapi::Refused),
    security(("bearer" = []))
)]
pub async fn publish(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(call_id): Path<String>,
    Body(request): Body<PublishRequest>,
) -> Result<Json<Publishing>, SignalingError> {
    let call_id = uuid(&call_id, "call_id")?;
    let offer = checked_sdp(&request.sdp, app.config.max_signal_bytes)?;
    let (sfu, _) = participant(&app, &caller.sub, &call_id).await?;
    let published = counted(&app, sfu.publish(&call_id, &caller.sub, offer).await)?;
    app.metrics.sfu_publishes.inc();
    // Who is in the call now, after the publish (see `Sfu::publish`).
    let call = app
        .calls
        .get(&call_id)
        .await?
        .ok_or(SignalingError::CallNotFound)?;
    let notice = json!({
        "type": "call.published",
        "call_id": call_id,
        "room_id": call.room_id,
        "user_id": caller.sub,
    })
    .to_string();
    for other in call.participants.iter().filter(|p| **p != caller.sub) {
        app.relay(other, notice.clone()).await?;
    }
    Ok(Json(Publishing {
        sdp: published.sdp,
        publishers: published.publishers,
    }))
}

#[utoipa::path(
    post,
    path = "/v1/calls/{call_id}/sfu/subscribe",
    tag = "calls",
    summary = "Receive another participant's media in a group call (the SFU's offer out)",
    params(("call_id" = String, Path, description = "the call")),
    request_body = SubscribeRequest,
    responses((status = 200, description = "the SFU's offer for that participant's media", body = SfuOffer), platform::openapi::Refused),
    security(("bearer" = []))
)]
pub async fn subscribe(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(call_id): Path<String>,
    Body(request): Body<SubscribeRequest>,
) -> Result<Json<SfuOffer>, SignalingError> {
    let call_id = uuid(&call_id, "call_id")?;
    let feed = uuid(&request.feed, "feed")?;
    if feed == caller.sub {
        return Err(SignalingError::Invalid(
            "subscribe to another participant".into(),
        ));
    }
    let (sfu, call) = participant(&app, &caller.sub, &call_id).await?;
    if !call.participants.contains(&feed) {
        return Err(SignalingError::Conflict(
            "peer_not_in_call",
            "that user is not in this call".into(),
        ));
    }
    let sdp = counted(&app, sfu.subscribe(&call_id, &caller.sub, &feed).await)?;
    app.metrics.sfu_subscriptions.inc();
    Ok(Json(SfuOffer { sdp }))
}

#[utoipa::path(
    post,
    path = "/v1/calls/{call_id}/sfu/start",
    tag = "calls",
    summary = "Answer the SFU's offer for a participant's media: it starts flowing",
    params(("call_id" = String, Path, description = "the call")),
    request_body = StartRequest,
    responses((status = 200, description = "the media flows"), platform::openapi::Refused),
    security(("bearer" = []))
)]
pub async fn start(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(call_id): Path<String>,
    Body(request): Body<StartRequest>,
) -> Result<Json<serde_json::Value>, SignalingError> {
    let call_id = uuid(&call_id, "call_id")?;
    let feed = uuid(&request.feed, "feed")?;
    let answer = checked_sdp(&request.sdp, app.config.max_signal_bytes)?;
    let (sfu, _) = participant(&app, &caller.sub, &call_id).await?;
    counted(&app, sfu.start(&call_id, &caller.sub, &feed, answer).await)?;
    Ok(Json(json!({})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdps_are_descriptions_of_bounded_size() {
        assert!(checked_sdp("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n", 100).is_ok());
        assert!(matches!(
            checked_sdp("hello", 100),
            Err(SignalingError::Invalid(_))
        ));
        assert!(matches!(
            checked_sdp(&format!("v=0{}", "x".repeat(200)), 100),
            Err(SignalingError::TooLarge(_))
        ));
    }
}
