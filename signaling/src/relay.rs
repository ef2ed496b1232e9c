//! The relay of offers, answers and ICE candidates between a call's participants.
//!
//! A client's `call.signal` frame reaches this tier from its fan-out node as `POST
//! /v1/calls/{call_id}/signal`, made with the client's own token (the same request works over
//! HTTP). Only a participant may signal, and only to another participant of the same call, as
//! the call state says (`crate::calls`); the frame then goes out on the fan-out nodes' call
//! signal channel, and the node holding the recipient's sockets hands it to each of them.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use platform::auth::Caller;
use platform::json::Json as Body;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::error::SignalingError;

#[derive(Deserialize, utoipa::ToSchema)]
pub struct SignalRequest {
    /// The participant it is for.
    to: String,
    /// An SDP offer or answer (`{type, sdp}`) or an ICE candidate (`{candidate, sdpMid?,
    /// sdpMLineIndex?, usernameFragment?}`), passed on as it is.
    #[schema(value_type = Object)]
    payload: Value,
}

pub(crate) fn uuid(raw: &str, field: &str) -> Result<String, SignalingError> {
    uuid::Uuid::parse_str(raw)
        .map(|u| u.to_string())
        .map_err(|_| SignalingError::Invalid(format!("{field} is not a valid id")))
}

/// Checks the payload's shape and size; returns it serialized.
fn checked_payload(payload: &Value, max_bytes: usize) -> Result<(), SignalingError> {
    let Some(object) = payload.as_object() else {
        return Err(SignalingError::Invalid(
            "payload is an object: an SDP description or an ICE candidate".into(),
        ));
    };
    let sdp = object.get("sdp").is_some_and(Value::is_string)
        && object
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| matches!(t, "offer" | "answer" | "pranswer" | "rollback"));
    let candidate = object.get("candidate").is_some_and(Value::is_string);
    if !sdp && !candidate {
        return Err(SignalingError::Invalid(
            "payload must hold an SDP description ({type, sdp}) or an ICE candidate ({candidate})"
                .into(),
        ));
    }
    let size = payload.to_string().len();
    if size > max_bytes {
        return Err(SignalingError::TooLarge(format!(
            "a signal payload is at most {max_bytes} bytes; this one is {size}"
        )));
    }
    Ok(())
}

#[utoipa::path(
    post,
    path = "/v1/calls/{call_id}/signal",
    tag = "calls",
    summary = "Relay an SDP offer/answer or ICE candidate to another participant of the call (the socket's call.signal frame)",
    params(("call_id" = String, Path, description = "the call")),
    request_body = SignalRequest,
    responses((status = 202, description = "passed to the recipient's sockets"), platform::openapi::Refused),
    security(("bearer" = []))
)]
pub async fn signal(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(call_id): Path<String>,
    Body(request): Body<SignalRequest>,
) -> Result<(StatusCode, Json<Value>), SignalingError> {
    app.limits.signals.check(&caller.sub)?;
    let call_id = uuid(&call_id, "call_id")?;
    let to = uuid(&request.to, "to")?;
    if to == caller.sub {
        return Err(SignalingError::Invalid(
            "a signal goes to another participant".into(),
        ));
    }
    checked_payload(&request.payload, app.config.max_signal_bytes)?;
    let call = app
        .calls
        .as_participant(
            &call_id,
            &caller.sub,
            |c| c.participants.contains(&to),
            "join the call before signaling in it",
        )
        .await?;
    if !call.participants.contains(&to) {
        return Err(SignalingError::Conflict(
            "peer_not_in_call",
            "the recipient is not in this call".into(),
        ));
    }
    let frame = json!({
        "type": "call.signal",
        "call_id": call_id,
        "room_id": call.room_id,
        "from": caller.sub,
        "payload": request.payload,
    });
    app.relay(&to, frame.to_string()).await?;
    app.metrics.relayed.inc();
    Ok((StatusCode::ACCEPTED, Json(json!({}))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_sdp_or_candidates_of_bounded_size() {
        let ok = [
            json!({"type": "offer", "sdp": "v=0"}),
            json!({"type": "answer", "sdp": "v=0"}),
            json!({"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host", "sdpMid": "0"}),
        ];
        for p in ok {
            assert!(checked_payload(&p, 1024).is_ok(), "{p}");
        }
        let bad = [
            json!("v=0"),
            json!({"type": "offer"}),
            json!({"type": "dance", "sdp": "v=0"}),
            json!({"sdp": 3, "type": "offer"}),
            json!({}),
        ];
        for p in bad {
            assert!(
                matches!(checked_payload(&p, 1024), Err(SignalingError::Invalid(_))),
                "{p}"
            );
        }
        let big = json!({"type": "offer", "sdp": "x".repeat(2000)});
        assert!(matches!(
            checked_payload(&big, 1024),
            Err(SignalingError::TooLarge(_))
        ));
    }
}
