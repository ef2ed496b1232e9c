//! The socket frames of API.md: parsing what clients send (every malformed frame becomes a
//! typed error the socket answers with an error frame; it never ends the connection) and
//! building what the node sends.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::commands::CallCommand;
use crate::error::FanoutError;

/// A frame from a client, after validation.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientFrame {
    Auth {
        access_token: String,
    },
    Subscribe {
        room_id: String,
        since_seq: Option<i64>,
    },
    Unsubscribe {
        room_id: String,
    },
    Send {
        room_id: String,
        client_msg_id: String,
        content: String,
        reply_to: Option<String>,
    },
    Typing {
        room_id: String,
    },
    /// `call.start` / `call.join` / `call.leave` / `call.decline` / `call.end`.
    Call {
        room_id: String,
        command: CallCommand,
    },
    /// `call.signal`: an offer, answer or ICE candidate for another participant.
    Signal {
        call_id: String,
        to: String,
        payload: Value,
    },
    Ping,
}

/// A parsed frame plus the client's correlation value (`ref`, or the `client_msg_id` of a
/// send), echoed in the answer.
#[derive(Debug)]
pub struct Parsed {
    pub frame: Result<ClientFrame, FanoutError>,
    pub reference: Option<String>,
}

#[derive(Deserialize)]
struct SubscribeBody {
    room_id: String,
    since_seq: Option<i64>,
}

#[derive(Deserialize)]
struct RoomBody {
    room_id: String,
}

#[derive(Deserialize)]
struct SendBody {
    room_id: String,
    client_msg_id: String,
    content: String,
    reply_to: Option<String>,
}

#[derive(Deserialize)]
struct CallBody {
    room_id: String,
    call_id: Option<String>,
    media: Option<String>,
    #[serde(default)]
    busy: bool,
}

#[derive(Deserialize)]
struct SignalBody {
    call_id: String,
    to: String,
    payload: Value,
}

#[derive(Deserialize)]
struct AuthBody {
    access_token: String,
}

pub fn parse(text: &str) -> Parsed {
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return Parsed {
                frame: Err(FanoutError::InvalidFrame(format!("not JSON: {e}"))),
                reference: None,
            };
        }
    };
    let reference = value
        .get("ref")
        .and_then(Value::as_str)
        .or_else(|| value.get("client_msg_id").and_then(Value::as_str))
        .map(|s| s.chars().take(128).collect());
    Parsed {
        frame: frame_of(value),
        reference,
    }
}

fn body<T: serde::de::DeserializeOwned>(kind: &str, value: Value) -> Result<T, FanoutError> {
    serde_json::from_value(value).map_err(|e| FanoutError::InvalidFrame(format!("{kind}: {e}")))
}

fn frame_of(value: Value) -> Result<ClientFrame, FanoutError> {
    let Some(kind) = value
        .get("type")
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return Err(FanoutError::InvalidFrame(
            "a frame is a JSON object with a string \"type\"".into(),
        ));
    };
    let frame = match kind.as_str() {
        "auth" => {
            let b: AuthBody = body(&kind, value)?;
            ClientFrame::Auth {
                access_token: b.access_token,
            }
        }
        "subscribe" => {
            let b: SubscribeBody = body(&kind, value)?;
            if matches!(b.since_seq, Some(s) if s < 0) {
                return Err(FanoutError::InvalidFrame(
                    "since_seq must be 0 or more".into(),
                ));
            }
            ClientFrame::Subscribe {
                room_id: room_id(b.room_id)?,
                since_seq: b.since_seq,
            }
        }
        "unsubscribe" => ClientFrame::Unsubscribe {
            room_id: room_id(body::<RoomBody>(&kind, value)?.room_id)?,
        },
        "typing" => ClientFrame::Typing {
            room_id: room_id(body::<RoomBody>(&kind, value)?.room_id)?,
        },
        "send" => {
            let b: SendBody = body(&kind, value)?;
            ClientFrame::Send {
                room_id: room_id(b.room_id)?,
                client_msg_id: b.client_msg_id,
                content: b.content,
                reply_to: b.reply_to,
            }
        }
        "call.start" | "call.join" | "call.leave" | "call.decline" | "call.end" => {
            let b: CallBody = body(&kind, value)?;
            let call_id = b.call_id.map(|id| id_of(id, "call_id")).transpose()?;
            if let Some(m) = &b.media
                && !matches!(m.as_str(), "audio" | "video")
            {
                return Err(FanoutError::InvalidFrame(
                    "media is \"audio\" or \"video\"".into(),
                ));
            }
            let room_id = room_id(b.room_id)?;
            let command = match (kind.as_str(), call_id) {
                ("call.start", _) => CallCommand::Start { media: b.media },
                (_, None) => {
                    return Err(FanoutError::InvalidFrame(format!(
                        "{kind}: call_id is required"
                    )));
                }
                ("call.join", Some(call_id)) => CallCommand::Join { call_id },
                ("call.leave", Some(call_id)) => CallCommand::Leave { call_id },
                ("call.decline", Some(call_id)) => CallCommand::Decline {
                    call_id,
                    busy: b.busy,
                },
                (_, Some(call_id)) => CallCommand::End { call_id },
            };
            ClientFrame::Call { room_id, command }
        }
        "call.signal" => {
            let b: SignalBody = body(&kind, value)?;
            ClientFrame::Signal {
                call_id: id_of(b.call_id, "call_id")?,
                to: id_of(b.to, "to")?,
                payload: b.payload,
            }
        }
        "ping" => ClientFrame::Ping,
        other => {
            return Err(FanoutError::UnknownType(
                other.chars().take(64).collect::<String>(),
            ));
        }
    };
    Ok(frame)
}

fn room_id(id: String) -> Result<String, FanoutError> {
    id_of(id, "room_id")
}

fn id_of(id: String, field: &str) -> Result<String, FanoutError> {
    uuid::Uuid::parse_str(&id)
        .map(|u| u.to_string())
        .map_err(|_| FanoutError::InvalidFrame(format!("{field} is not a valid id")))
}

/// `{"type":"event","room_id","seq","event"}`, serialized once and shared by every socket.
pub fn event_frame(room_id: &str, seq: i64, event: &schemas::DomainEvent) -> String {
    json!({"type": "event", "room_id": room_id, "seq": seq, "event": event}).to_string()
}

pub fn error_frame(code: &str, message: &str, reference: Option<&str>) -> String {
    error_frame_after(code, message, reference, None)
}

/// An error frame that says when to try again (`retry_after`, seconds) when that is known.
pub fn error_frame_after(
    code: &str,
    message: &str,
    reference: Option<&str>,
    retry_after: Option<u64>,
) -> String {
    let mut v = json!({"type": "error", "code": code, "message": message});
    if let Some(r) = reference {
        v["ref"] = json!(r);
    }
    if let Some(seconds) = retry_after {
        v["retry_after"] = json!(seconds);
    }
    v.to_string()
}

pub fn resync_frame(room_id: &str, reason: &str) -> String {
    json!({"type": "resync", "room_id": room_id, "reason": reason}).to_string()
}

pub fn subscribed_frame(room_id: &str, head: Option<i64>, reference: Option<&str>) -> String {
    let mut v = json!({"type": "subscribed", "room_id": room_id, "seq": head});
    if let Some(r) = reference {
        v["ref"] = json!(r);
    }
    v.to_string()
}

pub fn ack_frame(client_msg_id: &str, message_id: &str, seq: i64) -> String {
    json!({"type": "ack", "client_msg_id": client_msg_id, "message_id": message_id, "seq": seq})
        .to_string()
}

/// The answer to an accepted `call.*` lifecycle frame (`seq`: null when it changed nothing).
pub fn call_accepted_frame(
    action: &str,
    room_id: &str,
    call_id: Option<&str>,
    seq: Option<i64>,
    reference: Option<&str>,
) -> String {
    let mut v = json!({"type": "call.accepted", "action": action, "room_id": room_id, "call_id": call_id, "seq": seq});
    if let Some(r) = reference {
        v["ref"] = json!(r);
    }
    v.to_string()
}

pub fn pong_frame() -> String {
    json!({"type": "pong"}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_frames_are_typed_errors() {
        let room = "0193a7a0-0000-7000-8000-000000000001";
        for (text, code) in [
            ("{", "invalid_frame"),
            ("[]", "invalid_frame"),
            ("{\"type\": 3}", "invalid_frame"),
            ("{\"type\":\"dance\"}", "unknown_type"),
            ("{\"type\":\"subscribe\"}", "invalid_frame"),
            (
                "{\"type\":\"subscribe\",\"room_id\":\"x\"}",
                "invalid_frame",
            ),
            (
                &format!("{{\"type\":\"subscribe\",\"room_id\":\"{room}\",\"since_seq\":-1}}"),
                "invalid_frame",
            ),
            (
                &format!("{{\"type\":\"send\",\"room_id\":\"{room}\",\"content\":\"hi\"}}"),
                "invalid_frame",
            ),
            (
                &format!("{{\"type\":\"call.join\",\"room_id\":\"{room}\"}}"),
                "invalid_frame",
            ),
            (
                &format!("{{\"type\":\"call.leave\",\"room_id\":\"{room}\",\"call_id\":\"../x\"}}"),
                "invalid_frame",
            ),
            (
                &format!("{{\"type\":\"call.start\",\"room_id\":\"{room}\",\"media\":\"smell\"}}"),
                "invalid_frame",
            ),
            ("{\"type\":\"call.start\"}", "invalid_frame"),
            (
                &format!(
                    "{{\"type\":\"call.signal\",\"call_id\":\"{room}\",\"to\":\"bob\",\"payload\":{{}}}}"
                ),
                "invalid_frame",
            ),
            (
                &format!("{{\"type\":\"call.signal\",\"call_id\":\"{room}\",\"to\":\"{room}\"}}"),
                "invalid_frame",
            ),
        ] {
            let parsed = parse(text);
            let err = parsed.frame.expect_err(text);
            assert_eq!(err.code(), code, "{text}");
        }
    }

    #[test]
    fn references_are_echoed() {
        let room = "0193a7a0-0000-7000-8000-000000000001";
        let p = parse(&format!(
            "{{\"type\":\"send\",\"room_id\":\"{room}\",\"client_msg_id\":\"c1\",\"content\":\"hi\"}}"
        ));
        assert_eq!(p.reference.as_deref(), Some("c1"));
        assert!(matches!(p.frame, Ok(ClientFrame::Send { .. })));
        let p = parse(&format!(
            "{{\"type\":\"subscribe\",\"room_id\":\"{room}\",\"since_seq\":4,\"ref\":\"s1\"}}"
        ));
        assert_eq!(p.reference.as_deref(), Some("s1"));
        assert_eq!(
            p.frame.unwrap(),
            ClientFrame::Subscribe {
                room_id: room.into(),
                since_seq: Some(4)
            }
        );
    }
}
