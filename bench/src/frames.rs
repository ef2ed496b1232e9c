//! What the generator reads out of the servers' frames: cheap substring reads instead of a JSON
//! parse. The generator shares two cores with the whole platform, and a full parse of 167,000
//! frames/s would cost it most of one.

use crate::client::Flavor;

/// The number after `key` in `frame`, up to the first byte that is not a digit.
fn number_after(frame: &str, key: &str, last: bool) -> Option<u64> {
    let at = if last {
        frame.rfind(key)
    } else {
        frame.find(key)
    }? + key.len();
    let digits = frame[at..].bytes().take_while(u8::is_ascii_digit).count();
    frame[at..at + digits].parse().ok()
}

/// The string value after `key` (up to the next quote).
fn string_after<'a>(frame: &'a str, key: &str) -> Option<&'a str> {
    let at = frame.find(key)? + key.len();
    let len = frame[at..].find('"')?;
    Some(&frame[at..at + len])
}

/// An event frame's seq (ours; the peer has none) and the slot stamped in its content.
///
/// Our outer object's keys are serialized in order (`event`, `room_id`, `seq`, `type`), so the
/// last `"seq":` is the frame's; the content is `t<slot>|<padding>`, which no other field can contain.
pub fn read_event(flavor: Flavor, frame: &str) -> Option<(Option<u64>, u64)> {
    let seq = match flavor {
        Flavor::Ours => {
            if !frame.contains(r#""type":"event""#) {
                return None;
            }
            Some(number_after(frame, r#""seq":"#, true)?)
        }
        Flavor::Peer => {
            if !frame.starts_with(r#"42["event""#) {
                return None;
            }
            None
        }
    };
    let slot = number_after(frame, r#""content":"t"#, false)?;
    Some((seq, slot))
}

/// A send's answer: its reference (`<slot>-<room>-<n>`) and `Ok` or the error code.
///
/// Ours: `{"type":"ack","client_msg_id":ref,..}` or `{"type":"error","code",..,"ref"}`;
/// the peer's Socket.io acknowledgement: `43<id>[{"ok":true,"ref"}]` or `[{"error","ref"}]`.
pub fn read_answer(frame: &str) -> Option<(u64, usize, Result<(), String>)> {
    let reference = string_after(frame, r#""client_msg_id":""#)
        .or_else(|| string_after(frame, r#""ref":""#))?;
    let mut parts = reference.split('-');
    let slot = parts.next()?.parse().ok()?;
    let room = parts.next()?.parse().ok()?;
    let outcome = if frame.contains(r#""type":"ack""#) || frame.contains(r#""ok":true"#) {
        Ok(())
    } else {
        let code = string_after(frame, r#""code":""#)
            .or_else(|| string_after(frame, r#""error":""#))
            .unwrap_or("unknown");
        Err(code.to_string())
    };
    Some((slot, room, outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_seq_and_slot_from_event_frames_of_both_targets() {
        // The shape ws-fanout sends (keys in serialization order, the event's own fields inside).
        let ours = r#"{"event":{"kind":"message_posted","seq":7,"content":"t123456|xxxx","room_id":"r"},"room_id":"r","seq":7,"type":"event"}"#;
        assert_eq!(read_event(Flavor::Ours, ours), Some((Some(7), 123_456)));
        assert_eq!(
            read_event(
                Flavor::Ours,
                r#"{"room_id":"r","type":"resync","reason":"behind"}"#
            ),
            None
        );
        let peer = r#"42["event",{"room":"r","content":"t99|xx","sent_at":1}]"#;
        assert_eq!(read_event(Flavor::Peer, peer), Some((None, 99)));
        assert_eq!(read_event(Flavor::Peer, "2"), None);
    }

    #[test]
    fn reads_answers_of_both_targets() {
        let ack = r#"{"type":"ack","client_msg_id":"55-3-9","message_id":"m","seq":4}"#;
        assert_eq!(read_answer(ack), Some((55, 3, Ok(()))));
        let refused =
            r#"{"type":"error","code":"rate_limited","message":"slow down","ref":"56-1-2"}"#;
        assert_eq!(
            read_answer(refused),
            Some((56, 1, Err("rate_limited".into())))
        );
        assert_eq!(
            read_answer(r#"4312[{"ok":true,"ref":"70-0-1"}]"#),
            Some((70, 0, Ok(())))
        );
        assert_eq!(
            read_answer(r#"4313[{"error":"invalid_message","ref":"71-0-2"}]"#),
            Some((71, 0, Err("invalid_message".into())))
        );
        assert_eq!(read_answer(r#"{"type":"pong"}"#), None);
    }
}
