//! Real media through the platform: two WebRTC peers (the `webrtc` crate) in a 1:1 call set up
//! through our signaling (call commands over HTTP, `call.signal` frames over the sockets of the
//! entry), once directly and once forced through coturn (relay-only ICE with the credentials
//! `POST /v1/calls/turn-credentials` hands out). Each peer sends Opus and VP8 RTP and a
//! data-channel message; each must receive the other's RTP of both kinds and the message, and
//! the relayed call must really run over relayed candidates.
//!
//! The peers take loopback host candidates (`set_include_loopback_candidate`): loopback is
//! where this test stack lives, and coturn runs with `allow-loopback-peers`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::Client;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use test_support::{Api, User, env};
use tokio::sync::{Mutex, mpsc};
use webrtc::api::APIBuilder;
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::{MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::data_channel::RTCDataChannel;
use webrtc::data_channel::data_channel_message::DataChannelMessage;
use webrtc::ice_transport::ice_candidate::{RTCIceCandidate, RTCIceCandidateInit};
use webrtc::ice_transport::ice_candidate_type::RTCIceCandidateType;
use webrtc::ice_transport::ice_server::RTCIceServer;
use webrtc::interceptor::registry::Registry;
use webrtc::media::Sample;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::policy::ice_transport_policy::RTCIceTransportPolicy;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::rtp_transceiver::rtp_codec::RTCRtpCodecCapability;
use webrtc::track::track_local::TrackLocal;
use webrtc::track::track_local::track_local_static_sample::TrackLocalStaticSample;

const T: Duration = Duration::from_secs(60);
/// RTP packets of each kind a peer must receive from the other.
const PACKETS: usize = 25;

fn ws_url() -> String {
    format!("{}/v1/ws", env::entry_url().replacen("http", "ws", 1))
}

/// What one peer received.
#[derive(Default)]
struct Received {
    audio: AtomicUsize,
    video: AtomicUsize,
    messages: Mutex<Vec<String>>,
}

struct Peer {
    pc: Arc<RTCPeerConnection>,
    received: Arc<Received>,
    /// ICE candidates this peer gathered, to be signaled.
    candidates: mpsc::UnboundedReceiver<RTCIceCandidateInit>,
}

/// A peer with an audio and a video track that sends synthetic frames once connected, counts
/// what arrives, and answers data-channel messages' arrival (recorded).
async fn peer(
    ice_servers: Vec<RTCIceServer>,
    relay_only: bool,
    name: &'static str,
) -> anyhow::Result<Peer> {
    let mut media = MediaEngine::default();
    media.register_default_codecs()?;
    let registry = register_default_interceptors(Registry::new(), &mut media)?;
    let mut settings = SettingEngine::default();
    settings.set_include_loopback_candidate(true);
    let api = APIBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_setting_engine(settings)
        .build();
    let config = RTCConfiguration {
        ice_servers,
        ice_transport_policy: if relay_only {
            RTCIceTransportPolicy::Relay
        } else {
            RTCIceTransportPolicy::All
        },
        ..Default::default()
    };
    let pc = Arc::new(api.new_peer_connection(config).await?);
    let received = Arc::new(Received::default());

    for (mime, kind) in [(MIME_TYPE_OPUS, "audio"), (MIME_TYPE_VP8, "video")] {
        let track = Arc::new(TrackLocalStaticSample::new(
            RTCRtpCodecCapability {
                mime_type: mime.to_owned(),
                ..Default::default()
            },
            kind.to_owned(),
            name.to_owned(),
        ));
        let sender = pc
            .add_track(Arc::clone(&track) as Arc<dyn TrackLocal + Send + Sync>)
            .await?;
        // RTCP must be read for the interceptors to run.
        tokio::spawn(async move {
            let mut buf = vec![0u8; 1500];
            while sender.read(&mut buf).await.is_ok() {}
        });
        let frame = if kind == "audio" { 60 } else { 900 };
        let period = Duration::from_millis(if kind == "audio" { 20 } else { 33 });
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            for n in 0u32..3_000 {
                tick.tick().await;
                let mut data = vec![(n % 251) as u8; frame];
                data[0] = 0x10; // a VP8 key-frame-ish first byte; Opus takes any bytes
                let sample = Sample {
                    data: data.into(),
                    duration: period,
                    ..Default::default()
                };
                if track.write_sample(&sample).await.is_err() {
                    break;
                }
            }
        });
    }

    let counts = received.clone();
    pc.on_track(Box::new(move |track, _, _| {
        let counts = counts.clone();
        // Read in a task of its own: the handler's future is awaited before the next track's.
        tokio::spawn(async move {
            let audio = track.kind().to_string() == "audio";
            while track.read_rtp().await.is_ok() {
                let counter = if audio { &counts.audio } else { &counts.video };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
        Box::pin(async {})
    }));

    let (tx, candidates) = mpsc::unbounded_channel();
    pc.on_ice_candidate(Box::new(move |c: Option<RTCIceCandidate>| {
        let tx = tx.clone();
        Box::pin(async move {
            if let Some(c) = c
                && let Ok(init) = c.to_json()
            {
                let _ = tx.send(init);
            }
        })
    }));

    let inbox = received.clone();
    pc.on_data_channel(Box::new(move |dc: Arc<RTCDataChannel>| {
        let inbox = inbox.clone();
        Box::pin(async move { listen(&dc, inbox, name) })
    }));
    Ok(Peer {
        pc,
        received,
        candidates,
    })
}

/// Records the channel's messages and says hello on it once open.
fn listen(dc: &Arc<RTCDataChannel>, inbox: Arc<Received>, name: &'static str) {
    dc.on_message(Box::new(move |m: DataChannelMessage| {
        let inbox = inbox.clone();
        Box::pin(async move {
            inbox
                .messages
                .lock()
                .await
                .push(String::from_utf8_lossy(&m.data).to_string());
        })
    }));
    let open = Arc::clone(dc);
    dc.on_open(Box::new(move || {
        Box::pin(async move {
            let _ = open.send_text(format!("hello from {name}")).await;
        })
    }));
}

fn candidate_payload(c: &RTCIceCandidateInit) -> Value {
    json!({"candidate": c.candidate, "sdpMid": c.sdp_mid, "sdpMLineIndex": c.sdp_mline_index})
}

/// Sends `payload` to `to` through the platform's socket, and fails on a refusal.
async fn signal(socket: &mut Client, call: &str, to: &User, payload: Value) -> anyhow::Result<()> {
    socket
        .send(json!({"type": "call.signal", "call_id": call, "to": to.user_id, "payload": payload}))
        .await
}

/// Applies the signals that arrive on `socket` to `pc` (offers are answered through the
/// socket) until `stop`.
async fn apply_signals(
    socket: &mut Client,
    pc: &RTCPeerConnection,
    call: &str,
    peer_user: &User,
) -> anyhow::Result<()> {
    let frame = socket.json(Duration::from_millis(100)).await;
    let Ok(frame) = frame else { return Ok(()) };
    match frame["type"].as_str() {
        Some("call.signal") => {
            anyhow::ensure!(frame["from"] == peer_user.user_id.as_str(), "{frame}");
            let payload = &frame["payload"];
            match payload["type"].as_str() {
                Some("offer") => {
                    let offer = RTCSessionDescription::offer(
                        payload["sdp"].as_str().unwrap_or_default().to_string(),
                    )?;
                    pc.set_remote_description(offer).await?;
                    let answer = pc.create_answer(None).await?;
                    pc.set_local_description(answer.clone()).await?;
                    signal(
                        socket,
                        call,
                        peer_user,
                        json!({"type": "answer", "sdp": answer.sdp}),
                    )
                    .await?;
                }
                Some("answer") => {
                    let answer = RTCSessionDescription::answer(
                        payload["sdp"].as_str().unwrap_or_default().to_string(),
                    )?;
                    pc.set_remote_description(answer).await?;
                }
                _ => {
                    pc.add_ice_candidate(RTCIceCandidateInit {
                        candidate: payload["candidate"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        sdp_mid: payload["sdpMid"].as_str().map(str::to_string),
                        sdp_mline_index: payload["sdpMLineIndex"].as_u64().map(|i| i as u16),
                        username_fragment: None,
                    })
                    .await?;
                }
            }
        }
        Some("error") => anyhow::bail!("refused: {frame}"),
        _ => {}
    }
    Ok(())
}

async fn turn_servers(api: &Api, user: &User) -> anyhow::Result<Vec<RTCIceServer>> {
    let answer = api
        .call(
            Method::POST,
            "/v1/calls/turn-credentials",
            Some(&user.access_token),
            None,
        )
        .await?;
    anyhow::ensure!(answer.status == StatusCode::OK, "{answer:?}");
    Ok(vec![RTCIceServer {
        urls: answer.body["urls"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|u| u.as_str().map(str::to_string))
            // UDP: the TCP transport of TURN is not what this test is about.
            .filter(|u| u.contains("transport=udp"))
            .collect(),
        username: answer.body["username"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        credential: answer.body["credential"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    }])
}

/// A 1:1 call between two fresh users; `relay_only`: both peers may use relayed candidates only.
async fn call_and_exchange_media(relay_only: bool) -> anyhow::Result<()> {
    let api = Api::new(env::entry_url());
    let ann = api.user("media").await?;
    let bob = api.user("media").await?;
    let room = api.create_room(&ann, "private").await?;
    let invited = api
        .call(
            Method::POST,
            &format!("/v1/rooms/{room}/invites"),
            Some(&ann.access_token),
            Some(json!({"user_id": bob.user_id})),
        )
        .await?;
    anyhow::ensure!(invited.status == StatusCode::CREATED, "{invited:?}");
    anyhow::ensure!(api.join(&bob, &room).await?.status == StatusCode::OK);
    let mut ann_socket = Client::connect(&ws_url(), Some(&ann.access_token)).await?;
    let mut bob_socket = Client::connect(&ws_url(), Some(&bob.access_token)).await?;
    let started = api
        .call(
            Method::POST,
            &format!("/v1/rooms/{room}/calls"),
            Some(&ann.access_token),
            Some(json!({"media": "video"})),
        )
        .await?;
    anyhow::ensure!(started.status == StatusCode::CREATED, "{started:?}");
    let call = started.body["call_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let joined = api
        .call(
            Method::POST,
            &format!("/v1/rooms/{room}/calls/{call}/join"),
            Some(&bob.access_token),
            None,
        )
        .await?;
    anyhow::ensure!(joined.status == StatusCode::OK, "{joined:?}");

    let servers = |user: &User| {
        let (api, user) = (&api, user.clone());
        async move {
            if relay_only {
                turn_servers(api, &user).await
            } else {
                Ok(Vec::new())
            }
        }
    };
    let mut a = peer(servers(&ann).await?, relay_only, "ann").await?;
    let mut b = peer(servers(&bob).await?, relay_only, "bob").await?;
    // Bob joined last, so Bob offers (the web client's rule too); he opens the data channel.
    let dc = b.pc.create_data_channel("chat", None).await?;
    listen(&dc, b.received.clone(), "bob");
    let offer = b.pc.create_offer(None).await?;
    b.pc.set_local_description(offer.clone()).await?;
    signal(
        &mut bob_socket,
        &call,
        &ann,
        json!({"type": "offer", "sdp": offer.sdp}),
    )
    .await?;

    let deadline = tokio::time::Instant::now() + T;
    loop {
        while let Ok(c) = a.candidates.try_recv() {
            signal(&mut ann_socket, &call, &bob, candidate_payload(&c)).await?;
        }
        while let Ok(c) = b.candidates.try_recv() {
            signal(&mut bob_socket, &call, &ann, candidate_payload(&c)).await?;
        }
        apply_signals(&mut ann_socket, &a.pc, &call, &bob).await?;
        apply_signals(&mut bob_socket, &b.pc, &call, &ann).await?;
        let done = [&a.received, &b.received].iter().all(|r| {
            r.audio.load(Ordering::Relaxed) >= PACKETS && r.video.load(Ordering::Relaxed) >= PACKETS
        });
        let messages = (
            a.received.messages.lock().await.clone(),
            b.received.messages.lock().await.clone(),
        );
        if done
            && messages.0.contains(&"hello from bob".to_string())
            && messages.1.contains(&"hello from ann".to_string())
        {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "media did not flow: ann got {} audio / {} video packets and {:?}, bob {} / {} and {:?} (ICE: {} / {})",
            a.received.audio.load(Ordering::Relaxed),
            a.received.video.load(Ordering::Relaxed),
            messages.0,
            b.received.audio.load(Ordering::Relaxed),
            b.received.video.load(Ordering::Relaxed),
            messages.1,
            a.pc.ice_connection_state(),
            b.pc.ice_connection_state(),
        );
    }

    // Which path the media took: relayed candidates on both ends when forced, none otherwise.
    for (who, pc) in [("ann", &a.pc), ("bob", &b.pc)] {
        let pair = pc
            .sctp()
            .transport()
            .ice_transport()
            .get_selected_candidate_pair()
            .await
            .ok_or_else(|| anyhow::anyhow!("{who}: no selected candidate pair"))?;
        let relayed = pair.local.typ == RTCIceCandidateType::Relay;
        assert_eq!(
            relayed, relay_only,
            "{who}'s local candidate: {:?}",
            pair.local
        );
    }
    for pc in [&a.pc, &b.pc] {
        pc.close().await?;
    }
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
