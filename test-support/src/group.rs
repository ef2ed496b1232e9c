//! Real group calls through the platform's SFU (Janus) for tests and benchmarks: each member
//! publishes Opus and VP8 over one WebRTC connection (`POST /v1/calls/{id}/sfu/publish`) and
//! receives each other member over one connection per publisher (`sfu/subscribe`, then
//! `sfu/start` with the answer), learning of later publishers from `call.published` frames on
//! its socket, as the web client does.
//!
//! Janus skips loopback when it gathers candidates, so the SFU works on an interface of its own
//! here: [`sfu_network`] makes a veth pair whose near end holds `CHAT_SFU_TEST_ADDRESS` (the
//! address the test stack's Janus is told to gather on) and whose far end sits in a network
//! namespace of its own. The peers gather on that address only, so every packet of these calls
//! stays on this machine.

use std::collections::HashMap;
use std::net::IpAddr;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;

use crate::call::{Peer, Rate, Setup, Socket};
use crate::{Api, User};

/// The address of the SFU test network on this side (`CHAT_SFU_TEST_ADDRESS`).
pub fn sfu_address() -> anyhow::Result<IpAddr> {
    let raw = std::env::var("CHAT_SFU_TEST_ADDRESS").unwrap_or_else(|_| "10.203.7.1".into());
    raw.parse()
        .with_context(|| format!("CHAT_SFU_TEST_ADDRESS={raw} is not an address"))
}

/// Makes the SFU test network if it is not there (`deploy/local/sfu-net up`, which the
/// browser test uses too; `deploy/local/test` removes it when it ends).
pub fn sfu_network() -> anyhow::Result<IpAddr> {
    let address = sfu_address()?;
    let out = Command::new(crate::repo_root().join("deploy/local/sfu-net"))
        .arg("up")
        .env("CHAT_SFU_TEST_ADDRESS", address.to_string())
        .output()
        .context("cannot run deploy/local/sfu-net")?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(address)
}

/// One member of a group call: the connection publishing their media, one per publisher
/// they receive, and the socket announcing new publishers.
pub struct Member {
    pub user: User,
    pub publisher: Option<Peer>,
    /// Per publisher (user id), the connection receiving them.
    pub receiving: HashMap<String, Peer>,
    socket: Socket,
}

/// A group call of fresh users in one private room (the first started it, the others joined).
pub struct Group {
    /// When the call was started (the start command sent).
    pub started: Instant,
    pub room: String,
    pub call: String,
    pub members: Vec<Member>,
    pub rate: Rate,
    address: IpAddr,
}

/// Waits until `peer` gathered its candidates, and returns its local SDP with them in it (SFU
/// connections do not trickle).
pub async fn gathered_sdp(peer: &Peer) -> anyhow::Result<String> {
    let mut done = peer.pc.gathering_complete_promise().await;
    tokio::time::timeout(Duration::from_secs(10), done.recv())
        .await
        .context("ICE gathering did not finish")?;
    Ok(peer
        .pc
        .local_description()
        .await
        .context("no local description")?
        .sdp)
}

/// `peer`'s offer, candidates included.
pub async fn offer(peer: &Peer) -> anyhow::Result<String> {
    let offer = peer.pc.create_offer(None).await?;
    peer.pc.set_local_description(offer).await?;
    gathered_sdp(peer).await
}

/// `peer`'s answer to `offer`, candidates included.
pub async fn answer(peer: &Peer, offer: &str) -> anyhow::Result<String> {
    peer.pc
        .set_remote_description(RTCSessionDescription::offer(offer.to_string())?)
        .await?;
    let answer = peer.pc.create_answer(None).await?;
    peer.pc.set_local_description(answer).await?;
    gathered_sdp(peer).await
}

/// `user` publishes `peer`'s media into `call`: the SFU's answer is applied; the others
/// publishing already (user ids).
pub async fn publish(
    api: &Api,
    user: &User,
    call: &str,
    peer: &Peer,
) -> anyhow::Result<Vec<String>> {
    let sdp = offer(peer).await?;
    let answer = sfu(api, user, call, "publish", json!({"sdp": sdp})).await?;
    peer.pc
        .set_remote_description(RTCSessionDescription::answer(
            answer["sdp"].as_str().unwrap_or_default().to_string(),
        )?)
        .await?;
    Ok(answer["publishers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str().map(str::to_string))
        .collect())
}

/// A peer on the SFU test network: sending at `send`, or only receiving.
pub async fn sfu_peer(address: IpAddr, send: Option<Rate>) -> anyhow::Result<Peer> {
    Peer::open(Setup {
        ice_servers: Vec::new(),
        relay_only: false,
        name: "group",
        send,
        only_address: Some(address),
    })
    .await
}

impl Group {
    /// `owner` and `others` in a fresh private room, every one of them in a call the owner
    /// started, each with a socket open.
    pub async fn set_up(api: &Api, size: usize, rate: Rate) -> anyhow::Result<Group> {
        let address = sfu_network()?;
        let owner = api.with_fresh_address().user("group").await?;
        let mut others = Vec::new();
        for _ in 1..size {
            others.push(api.with_fresh_address().user("group").await?);
        }
        let room = api.create_room(&owner, "private").await?;
        api.invite_and_join(&owner, &room, &others.iter().collect::<Vec<_>>())
            .await?;
        let started = Instant::now();
        let call = api.start_call(&owner, &room).await?;
        for user in &others {
            api.join_call(user, &room, &call).await?;
        }
        let mut members = Vec::new();
        for user in std::iter::once(owner).chain(others) {
            members.push(Member {
                socket: Socket::connect(&user).await?,
                user,
                publisher: None,
                receiving: HashMap::new(),
            });
        }
        Ok(Group {
            started,
            room,
            call,
            members,
            rate,
            address,
        })
    }

    /// Member `i` publishes, and subscribes to whoever published before.
    pub async fn publish(&mut self, api: &Api, i: usize) -> anyhow::Result<()> {
        let peer = sfu_peer(self.address, Some(self.rate)).await?;
        let publishers = publish(api, &self.members[i].user, &self.call, &peer).await?;
        self.members[i].publisher = Some(peer);
        for feed in publishers {
            self.receive(api, i, &feed).await?;
        }
        Ok(())
    }

    /// Member `i` receives `feed`'s media.
    pub async fn receive(&mut self, api: &Api, i: usize, feed: &str) -> anyhow::Result<()> {
        let user = self.members[i].user.clone();
        let offered = sfu(api, &user, &self.call, "subscribe", json!({"feed": feed})).await?;
        let peer = sfu_peer(self.address, None).await?;
        let sdp = answer(&peer, offered["sdp"].as_str().unwrap_or_default()).await?;
        sfu(
            api,
            &user,
            &self.call,
            "start",
            json!({"feed": feed, "sdp": sdp}),
        )
        .await?;
        if let Some(old) = self.members[i].receiving.insert(feed.to_string(), peer) {
            old.close().await;
        }
        Ok(())
    }

    /// Reads the members' sockets, subscribing to each publisher announced, until `done`
    /// holds or `timeout` passes.
    pub async fn until(
        &mut self,
        api: &Api,
        timeout: Duration,
        done: impl Fn(&Group) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            if Instant::now() >= deadline {
                bail!("not done in {timeout:?}: {}", self.describe());
            }
            for i in 0..self.members.len() {
                let Some(frame) = self.members[i]
                    .socket
                    .next(Duration::from_millis(20))
                    .await?
                else {
                    continue;
                };
                if frame["type"] == "call.published" && frame["call_id"] == self.call.as_str() {
                    let feed = frame["user_id"].as_str().unwrap_or_default().to_string();
                    // Heard of already (the publish's answer listed them), unless that
                    // connection ended (they published anew).
                    let live = self.members[i].receiving.get(&feed).is_some_and(|p| {
                        !matches!(
                            p.pc.connection_state(),
                            RTCPeerConnectionState::Closed
                                | RTCPeerConnectionState::Failed
                                | RTCPeerConnectionState::Disconnected
                        )
                    });
                    if !live {
                        self.receive(api, i, &feed).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether every member receives at least `packets` of each kind from every other member
    /// still in `from`.
    pub fn everyone_hears(&self, from: &[usize], packets: usize) -> bool {
        from.iter().all(|&i| {
            from.iter().filter(|&&j| j != i).all(|&j| {
                self.members[i]
                    .receiving
                    .get(&self.members[j].user.user_id)
                    .is_some_and(|peer| peer.media_flowing(packets))
            })
        })
    }

    /// Video packets member `i` has received from member `j`.
    pub fn video_from(&self, i: usize, j: usize) -> usize {
        self.members[i]
            .receiving
            .get(&self.members[j].user.user_id)
            .map(|p| p.received.video.load(Ordering::Relaxed))
            .unwrap_or_default()
    }

    fn describe(&self) -> String {
        let mut out = Vec::new();
        for (i, m) in self.members.iter().enumerate() {
            for (j, other) in self.members.iter().enumerate() {
                if i != j {
                    let got = m.receiving.get(&other.user.user_id).map(|p| {
                        (
                            p.received.audio.load(Ordering::Relaxed),
                            p.received.video.load(Ordering::Relaxed),
                        )
                    });
                    out.push(format!("{i}<-{j}: {got:?}"));
                }
            }
        }
        out.join(", ")
    }

    pub async fn close(&self) {
        for m in &self.members {
            if let Some(p) = &m.publisher {
                p.close().await;
            }
            for p in m.receiving.values() {
                p.close().await;
            }
        }
    }
}

/// `POST /v1/calls/{call}/sfu/{action}` as `user`; the answer's body, or the refusal as error.
pub async fn sfu(
    api: &Api,
    user: &User,
    call: &str,
    action: &str,
    body: Value,
) -> anyhow::Result<Value> {
    let answer = api
        .call(
            Method::POST,
            &format!("/v1/calls/{call}/sfu/{action}"),
            Some(&user.access_token),
            Some(body),
        )
        .await?;
    if answer.status != StatusCode::OK {
        bail!("sfu/{action}: {} {}", answer.status, answer.body);
    }
    Ok(answer.body)
}

/// The rooms Janus holds now, asked of Janus itself (with the stack's API secret).
pub async fn janus_rooms() -> anyhow::Result<Vec<String>> {
    let url = std::env::var("CHAT_JANUS_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:8095/janus".to_string());
    let secret_file = std::env::var("CHAT_JANUS_SECRET_FILE").context("CHAT_JANUS_SECRET_FILE")?;
    let secret = std::fs::read_to_string(&secret_file)
        .with_context(|| format!("reading {secret_file}"))?
        .trim()
        .to_string();
    let http = reqwest::Client::new();
    let post = |path: String, body: Value| {
        let http = http.clone();
        let url = format!("{url}{path}");
        let mut body = body;
        body["apisecret"] = json!(secret);
        body["transaction"] = json!("test");
        async move {
            let answer: Value = http.post(url).json(&body).send().await?.json().await?;
            anyhow::Ok(answer)
        }
    };
    let session = post(String::new(), json!({"janus": "create"})).await?["data"]["id"]
        .as_u64()
        .context("no Janus session")?;
    let handle = post(
        format!("/{session}"),
        json!({"janus": "attach", "plugin": "janus.plugin.videoroom"}),
    )
    .await?["data"]["id"]
        .as_u64()
        .context("no Janus handle")?;
    let listed = post(
        format!("/{session}/{handle}"),
        json!({"janus": "message", "body": {"request": "list", "admin_key": secret}}),
    )
    .await?;
    post(format!("/{session}"), json!({"janus": "destroy"})).await?;
    Ok(listed["plugindata"]["data"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["room"].as_str().map(str::to_string))
        .collect())
}
