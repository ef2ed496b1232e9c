//! Real calls for tests and benchmarks: two WebRTC peers (the `webrtc` crate: ICE with TURN,
//! DTLS, SRTP, SCTP) set up a 1:1 call through the platform, as clients do: the call started
//! and joined over HTTP, offer, answer and trickled candidates as `call.signal` frames over the
//! entry's sockets. Each peer sends synthetic Opus and VP8 frames at a set rate, counts the RTP
//! it receives (and the video packets lost, from their sequence numbers), and says hello on a
//! data channel.
//!
//! The peers take loopback host candidates (`set_include_loopback_candidate`): loopback is
//! where the local stack lives, and its coturn runs with `allow-loopback-peers`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
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

use crate::{Api, User, env};

/// What each peer sends: 20 ms Opus frames of `audio_bytes`, and `fps` VP8 frames of
/// `video_bytes` (a VP8 frame of 900 bytes at 30 fps is about 220 kbit/s).
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub audio_bytes: usize,
    pub video_bytes: usize,
    pub fps: u32,
}

impl Default for Rate {
    fn default() -> Self {
        Self {
            audio_bytes: 60,
            video_bytes: 900,
            fps: 30,
        }
    }
}

/// What one peer received.
#[derive(Default)]
pub struct Received {
    pub audio: AtomicUsize,
    pub video: AtomicUsize,
    /// Video packets the sequence numbers say were sent since counting (re)started.
    pub video_expected: AtomicU64,
    /// When the first RTP packet arrived (ms after the peer was made).
    pub first_rtp_ms: AtomicU64,
    pub messages: Mutex<Vec<String>>,
    /// Restarts the video loss count (the receiving task sees it at its next packet).
    reset: AtomicUsize,
}

impl Received {
    /// Video loss since the last [`Self::restart`]: (expected, received).
    pub fn video_loss(&self) -> (u64, u64) {
        (
            self.video_expected.load(Ordering::Relaxed),
            self.video.load(Ordering::Relaxed) as u64,
        )
    }

    /// Counts from now on.
    pub fn restart(&self) {
        self.reset.fetch_add(1, Ordering::Relaxed);
        self.video.store(0, Ordering::Relaxed);
        self.video_expected.store(0, Ordering::Relaxed);
    }
}

/// How to make a [`Peer`].
pub struct Setup {
    pub ice_servers: Vec<RTCIceServer>,
    pub relay_only: bool,
    /// Said on its data channels.
    pub name: &'static str,
    /// What it sends; `None` for a peer that only receives (an SFU subscription).
    pub send: Option<Rate>,
    /// Gather host candidates on this address only (the SFU's test network), not loopback.
    pub only_address: Option<std::net::IpAddr>,
}

pub struct Peer {
    pub pc: Arc<RTCPeerConnection>,
    pub received: Arc<Received>,
    candidates: mpsc::UnboundedReceiver<RTCIceCandidateInit>,
    /// Set when closed: the synthetic sources stop.
    stop: Arc<AtomicBool>,
}

impl Peer {
    /// A peer sending at `rate`, with loopback candidates.
    pub async fn new(
        ice_servers: Vec<RTCIceServer>,
        relay_only: bool,
        name: &'static str,
        rate: Rate,
    ) -> anyhow::Result<Peer> {
        Self::open(Setup {
            ice_servers,
            relay_only,
            name,
            send: Some(rate),
            only_address: None,
        })
        .await
    }

    pub async fn open(setup: Setup) -> anyhow::Result<Peer> {
        let Setup {
            ice_servers,
            relay_only,
            name,
            send,
            only_address,
        } = setup;
        let mut media = MediaEngine::default();
        media.register_default_codecs()?;
        let registry = register_default_interceptors(Registry::new(), &mut media)?;
        let mut settings = SettingEngine::default();
        match only_address {
            Some(address) => settings.set_ip_filter(Box::new(move |ip| ip == address)),
            None => settings.set_include_loopback_candidate(true),
        }
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
        let stop = Arc::new(AtomicBool::new(false));
        let made = Instant::now();

        let tracks = send.map(|rate| {
            [
                (MIME_TYPE_OPUS, "audio", rate.audio_bytes, 50),
                (MIME_TYPE_VP8, "video", rate.video_bytes, rate.fps.max(1)),
            ]
        });
        for (mime, kind, bytes, per_second) in tracks.into_iter().flatten() {
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
            let period = Duration::from_micros(1_000_000 / u64::from(per_second));
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let mut data = vec![(n % 251) as u8; bytes.max(1)];
                    data[0] = 0x10;
                    n = n.wrapping_add(1);
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
                let mut seen_reset = usize::MAX;
                let (mut first, mut highest) = (0u64, 0u64);
                while let Ok((packet, _)) = track.read_rtp().await {
                    let _ = counts.first_rtp_ms.compare_exchange(
                        0,
                        made.elapsed().as_millis().max(1) as u64,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    if audio {
                        counts.audio.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    // Extended sequence numbers (the 16-bit ones wrap every ~36 min at 30 fps).
                    let seq = u64::from(packet.header.sequence_number);
                    let reset = counts.reset.load(Ordering::Relaxed);
                    if reset != seen_reset {
                        seen_reset = reset;
                        first = seq;
                        highest = seq;
                    } else {
                        let mut extended = (highest & !0xffff) | seq;
                        if extended + 0x8000 < highest {
                            extended += 0x1_0000;
                        }
                        highest = highest.max(extended);
                    }
                    counts.video.fetch_add(1, Ordering::Relaxed);
                    counts
                        .video_expected
                        .store(highest - first + 1, Ordering::Relaxed);
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
            stop,
        })
    }

    /// Whether audio and video RTP both arrived.
    pub fn media_flowing(&self, packets: usize) -> bool {
        self.received.audio.load(Ordering::Relaxed) >= packets
            && self.received.video.load(Ordering::Relaxed) >= packets
    }

    /// Whether the media runs over a relayed local candidate.
    pub async fn relayed(&self) -> anyhow::Result<bool> {
        let pair = self
            .pc
            .sctp()
            .transport()
            .ice_transport()
            .get_selected_candidate_pair()
            .await
            .context("no selected candidate pair")?;
        Ok(pair.local.typ == RTCIceCandidateType::Relay)
    }

    pub async fn close(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.pc.close().await;
    }
}

/// Records a data channel's messages and says hello on it once open.
pub fn listen(dc: &Arc<RTCDataChannel>, inbox: Arc<Received>, name: &'static str) {
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

/// The RTCIceServer of the platform's TURN server for `user` (UDP).
pub async fn turn_servers(api: &Api, user: &User) -> anyhow::Result<Vec<RTCIceServer>> {
    let answer = api
        .call(
            Method::POST,
            "/v1/calls/turn-credentials",
            Some(&user.access_token),
            None,
        )
        .await?;
    if answer.status != StatusCode::OK {
        bail!("turn credentials: {} {}", answer.status, answer.body);
    }
    let text = |field: &str| answer.body[field].as_str().unwrap_or_default().to_string();
    Ok(vec![RTCIceServer {
        urls: answer.body["urls"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|u| u.as_str().map(str::to_string))
            .filter(|u| u.contains("transport=udp"))
            .collect(),
        username: text("username"),
        credential: text("credential"),
    }])
}

/// A socket of the entry, opened with a user's token.
pub struct Socket {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Socket {
    pub async fn connect(user: &User) -> anyhow::Result<Self> {
        let url = format!(
            "{}/v1/ws?access_token={}",
            env::entry_url().replacen("http", "ws", 1),
            user.access_token
        );
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        Ok(Self { ws })
    }

    pub async fn send(&mut self, frame: Value) -> anyhow::Result<()> {
        self.ws.send(Message::text(frame.to_string())).await?;
        Ok(())
    }

    /// The next frame within `wait`, if any.
    pub async fn next(&mut self, wait: Duration) -> anyhow::Result<Option<Value>> {
        match tokio::time::timeout(wait, self.ws.next()).await {
            Err(_) => Ok(None),
            Ok(None) => bail!("socket closed"),
            Ok(Some(Err(e))) => bail!("socket error: {e}"),
            Ok(Some(Ok(Message::Text(t)))) => Ok(Some(serde_json::from_str(t.as_str())?)),
            Ok(Some(Ok(_))) => Ok(None),
        }
    }
}

/// A socket carrying one user's call signals to the other participant.
pub struct Signals {
    socket: Socket,
    call: String,
    /// The other participant.
    to: String,
}

impl Signals {
    async fn connect(user: &User, call: &str, to: &User) -> anyhow::Result<Self> {
        Ok(Self {
            socket: Socket::connect(user).await?,
            call: call.to_string(),
            to: to.user_id.clone(),
        })
    }

    async fn send(&mut self, payload: Value) -> anyhow::Result<()> {
        self.socket
            .send(json!({"type": "call.signal", "call_id": self.call, "to": self.to, "payload": payload}))
            .await
    }

    async fn next(&mut self, wait: Duration) -> anyhow::Result<Option<Value>> {
        self.socket.next(wait).await
    }
}

/// A 1:1 call between two fresh users of one private room: `caller` started it, `callee`
/// joined it and offered (the later participant offers, as the web client does).
pub struct Call {
    pub caller: Peer,
    pub callee: Peer,
    caller_signals: Signals,
    callee_signals: Signals,
}

impl Call {
    /// Two users, a room, the call started and joined, both peers made and the offer sent.
    pub async fn set_up(api: &Api, relay_only: bool, rate: Rate) -> anyhow::Result<Call> {
        let ann = api.with_fresh_address().user("call").await?;
        let bob = api.with_fresh_address().user("call").await?;
        let room = api.create_room(&ann, "private").await?;
        api.invite_and_join(&ann, &room, &[&bob]).await?;
        let call = api.start_call(&ann, &room).await?;
        let caller_signals = Signals::connect(&ann, &call, &bob).await?;
        let mut callee_signals = Signals::connect(&bob, &call, &ann).await?;
        api.join_call(&bob, &room, &call).await?;
        let servers = |user: &User| {
            let user = user.clone();
            async move {
                if relay_only {
                    turn_servers(api, &user).await
                } else {
                    Ok(Vec::new())
                }
            }
        };
        let caller = Peer::new(servers(&ann).await?, relay_only, "caller", rate).await?;
        let callee = Peer::new(servers(&bob).await?, relay_only, "callee", rate).await?;
        let dc = callee.pc.create_data_channel("chat", None).await?;
        listen(&dc, callee.received.clone(), "callee");
        let offer = callee.pc.create_offer(None).await?;
        callee.pc.set_local_description(offer.clone()).await?;
        callee_signals
            .send(json!({"type": "offer", "sdp": offer.sdp}))
            .await?;
        Ok(Call {
            caller,
            callee,
            caller_signals,
            callee_signals,
        })
    }

    /// Passes signals both ways until `done` holds or `timeout` passes.
    pub async fn until(
        &mut self,
        timeout: Duration,
        done: impl Fn(&Call) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            if Instant::now() >= deadline {
                bail!(
                    "not done in {timeout:?}: caller got {} audio / {} video, callee {} / {} (ICE {} / {})",
                    self.caller.received.audio.load(Ordering::Relaxed),
                    self.caller.received.video.load(Ordering::Relaxed),
                    self.callee.received.audio.load(Ordering::Relaxed),
                    self.callee.received.video.load(Ordering::Relaxed),
                    self.caller.pc.ice_connection_state(),
                    self.callee.pc.ice_connection_state(),
                );
            }
            pump(&mut self.caller, &mut self.caller_signals).await?;
            pump(&mut self.callee, &mut self.callee_signals).await?;
        }
        Ok(())
    }

    /// Both peers receive audio and video.
    pub fn media_flowing(&self, packets: usize) -> bool {
        self.caller.media_flowing(packets) && self.callee.media_flowing(packets)
    }

    pub async fn close(&self) {
        self.caller.close().await;
        self.callee.close().await;
    }
}

/// Sends the peer's new candidates and applies what its socket brought (answering offers).
async fn pump(peer: &mut Peer, signals: &mut Signals) -> anyhow::Result<()> {
    while let Ok(c) = peer.candidates.try_recv() {
        signals
            .send(json!({"candidate": c.candidate, "sdpMid": c.sdp_mid, "sdpMLineIndex": c.sdp_mline_index}))
            .await?;
    }
    let Some(frame) = signals.next(Duration::from_millis(20)).await? else {
        return Ok(());
    };
    match frame["type"].as_str() {
        Some("call.signal") => {
            if frame["from"] != signals.to.as_str() {
                bail!("a signal from someone else: {frame}");
            }
            let payload = &frame["payload"];
            let sdp = payload["sdp"].as_str().unwrap_or_default().to_string();
            match payload["type"].as_str() {
                Some("offer") => {
                    peer.pc
                        .set_remote_description(RTCSessionDescription::offer(sdp)?)
                        .await?;
                    let answer = peer.pc.create_answer(None).await?;
                    peer.pc.set_local_description(answer.clone()).await?;
                    signals
                        .send(json!({"type": "answer", "sdp": answer.sdp}))
                        .await?;
                }
                Some("answer") => {
                    peer.pc
                        .set_remote_description(RTCSessionDescription::answer(sdp)?)
                        .await?;
                }
                _ => {
                    peer.pc
                        .add_ice_candidate(RTCIceCandidateInit {
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
        Some("error") => bail!("refused: {frame}"),
        _ => {}
    }
    Ok(())
}
