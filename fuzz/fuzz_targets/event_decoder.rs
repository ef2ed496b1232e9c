//! A record body from the log, decoded as the event kind its first byte picks: hostile bytes
//! are refused with an error, never a panic or an allocation beyond the decoder's bound, and
//! what decodes is an event of that kind that serializes to the socket's JSON.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use schemas::{EventCodec, EventKind};

/// No registry is asked: `decode_datum` is the part of decoding after the schema lookup.
static CODEC: LazyLock<EventCodec> =
    LazyLock::new(|| EventCodec::new("http://127.0.0.1:9").expect("a codec"));

fuzz_target!(|data: &[u8]| {
    let Some((&pick, datum)) = data.split_first() else {
        return;
    };
    let kind = EventKind::ALL[usize::from(pick) % EventKind::ALL.len()];
    if let Ok(event) = CODEC.decode_datum(kind, datum) {
        assert_eq!(event.kind(), kind);
        let _ = event.validate();
        serde_json::to_string(&event).expect("a decoded event serializes");
    }
});
