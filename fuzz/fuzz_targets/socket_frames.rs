//! A text frame from a socket: every input parses to a frame or to an error that the socket
//! answers with a well-formed error frame; ids in accepted frames are canonical and the echoed
//! reference is bounded.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use ws_fanout::protocol::{ClientFrame, parse};

fn canonical(id: &str) {
    let parsed = uuid::Uuid::parse_str(id).expect("an accepted room id is an id");
    assert_eq!(
        parsed.to_string(),
        id,
        "ids are passed on in canonical form"
    );
}

fuzz_target!(|data: &[u8]| {
    // The WebSocket layer hands over text frames only as valid UTF-8.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = parse(text);
    if let Some(reference) = &parsed.reference {
        assert!(reference.chars().count() <= 128);
    }
    match parsed.frame {
        Ok(
            ClientFrame::Subscribe { room_id, .. }
            | ClientFrame::Unsubscribe { room_id }
            | ClientFrame::Typing { room_id }
            | ClientFrame::Send { room_id, .. },
        ) => canonical(&room_id),
        Ok(ClientFrame::Call { room_id, command }) => {
            canonical(&room_id);
            if let Some(call_id) = command.call_id() {
                canonical(call_id);
            }
        }
        Ok(ClientFrame::Signal { call_id, to, .. }) => {
            canonical(&call_id);
            canonical(&to);
        }
        Ok(ClientFrame::Auth { .. } | ClientFrame::Ping) => {}
        Err(e) => {
            let frame: Value =
                serde_json::from_str(&e.frame(parsed.reference.as_deref())).expect("JSON");
            assert_eq!(frame["type"], "error");
            assert!(frame["code"].as_str().is_some_and(|c| !c.is_empty()));
            assert!(frame["message"].is_string());
        }
    }
});
