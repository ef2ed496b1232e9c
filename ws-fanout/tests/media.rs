//! Real media through the platform: two WebRTC peers (the `webrtc` crate) in a 1:1 call set up
//! through our signaling (`test_support::call`: call commands over HTTP, `call.signal` frames
//! over the entry's sockets), once directly and once forced through coturn (relay-only ICE with
//! the credentials `POST /v1/calls/turn-credentials` hands out). Each peer sends Opus and VP8
//! RTP and a data-channel message; each must receive the other's RTP of both kinds and the
//! message, and the media must take the path asked for (relayed candidates, or none).

use std::time::Duration;

use test_support::call::{Call, Rate};
use test_support::{Api, env};

/// RTP packets of each kind a peer must receive from the other.
const PACKETS: usize = 25;

async fn call_and_exchange_media(relay_only: bool) -> anyhow::Result<()> {
    let api = Api::new(env::entry_url());
    let mut call = Call::set_up(&api, relay_only, Rate::default()).await?;
    let hellos = |c: &Call| {
        let caller = c
            .caller
            .received
            .messages
            .try_lock()
            .map(|m| m.contains(&"hello from callee".to_string()));
        let callee = c
            .callee
            .received
            .messages
            .try_lock()
            .map(|m| m.contains(&"hello from caller".to_string()));
        matches!((caller, callee), (Ok(true), Ok(true)))
    };
    call.until(Duration::from_secs(60), |c| {
        c.media_flowing(PACKETS) && hellos(c)
    })
    .await?;
    for (who, peer) in [("caller", &call.caller), ("callee", &call.callee)] {
        assert_eq!(
            peer.relayed().await?,
            relay_only,
            "{who}'s media path is relayed only when forced"
        );
    }
    call.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_call_carries_audio_video_and_data_both_ways() -> anyhow::Result<()> {
    call_and_exchange_media(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_forced_through_turn_carries_audio_video_and_data_both_ways() -> anyhow::Result<()> {
    call_and_exchange_media(true).await
}
