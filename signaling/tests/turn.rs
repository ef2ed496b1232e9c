//! TURN credentials from the entry, used for real against coturn: the credentials answer in
//! coturn's REST-API scheme, coturn grants an allocation with them, and refuses expired or
//! forged ones. Who may ask (anonymous, a bad token, any signed-in user) and how often.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use reqwest::StatusCode;
use sha1::Sha1;
use test_support::{Api, env};

const COOKIE: u32 = 0x2112_A442;
const ALLOCATE: u16 = 0x0003;
const ALLOCATE_OK: u16 = 0x0103;
const ALLOCATE_ERROR: u16 = 0x0113;
const USERNAME: u16 = 0x0006;
const MESSAGE_INTEGRITY: u16 = 0x0008;
const ERROR_CODE: u16 = 0x0009;
const REALM: u16 = 0x0014;
const NONCE: u16 = 0x0015;
const XOR_RELAYED_ADDRESS: u16 = 0x0016;
const REQUESTED_TRANSPORT: u16 = 0x0019;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// A STUN message: type, transaction id and attributes, encoded per RFC 5389.
struct Message {
    kind: u16,
    attributes: Vec<(u16, Vec<u8>)>,
}

impl Message {
    fn encode(&self, tid: &[u8; 12], integrity_key: Option<&[u8]>) -> Vec<u8> {
        let mut body = Vec::new();
        for (kind, value) in &self.attributes {
            body.extend_from_slice(&kind.to_be_bytes());
            body.extend_from_slice(&(value.len() as u16).to_be_bytes());
            body.extend_from_slice(value);
            while body.len() % 4 != 0 {
                body.push(0);
            }
        }
        let header = |length: usize| {
            let mut h = Vec::with_capacity(20);
            h.extend_from_slice(&self.kind.to_be_bytes());
            h.extend_from_slice(&(length as u16).to_be_bytes());
            h.extend_from_slice(&COOKIE.to_be_bytes());
            h.extend_from_slice(tid);
            h
        };
        match integrity_key {
            None => [header(body.len()), body].concat(),
            Some(key) => {
                // The HMAC covers the message with its length already counting the attribute.
                let mut signed = [header(body.len() + 24), body].concat();
                let mut mac = Hmac::<Sha1>::new_from_slice(key).expect("any key length");
                mac.update(&signed);
                signed.extend_from_slice(&MESSAGE_INTEGRITY.to_be_bytes());
                signed.extend_from_slice(&20u16.to_be_bytes());
                signed.extend_from_slice(&mac.finalize().into_bytes());
                signed
            }
        }
    }

    fn decode(bytes: &[u8]) -> anyhow::Result<(Message, [u8; 12])> {
        anyhow::ensure!(bytes.len() >= 20, "short STUN message");
        let kind = u16::from_be_bytes([bytes[0], bytes[1]]);
        let length = u16::from_be_bytes([bytes[2], bytes[3]]) as usize;
        anyhow::ensure!(bytes.len() >= 20 + length, "truncated STUN message");
        let mut tid = [0u8; 12];
        tid.copy_from_slice(&bytes[8..20]);
        let mut attributes = Vec::new();
        let mut at = 20;
        while at + 4 <= 20 + length {
            let kind = u16::from_be_bytes([bytes[at], bytes[at + 1]]);
            let len = u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize;
            anyhow::ensure!(at + 4 + len <= bytes.len(), "attribute past the end");
            attributes.push((kind, bytes[at + 4..at + 4 + len].to_vec()));
            at += 4 + len.div_ceil(4) * 4;
        }
        Ok((Message { kind, attributes }, tid))
    }

    fn get(&self, kind: u16) -> Option<&[u8]> {
        self.attributes
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, v)| v.as_slice())
    }

    fn error_code(&self) -> Option<u16> {
        self.get(ERROR_CODE)
            .filter(|v| v.len() >= 4)
            .map(|v| u16::from(v[2] & 0x7) * 100 + u16::from(v[3]))
    }
}

/// Asks coturn at `server` (UDP) for a relayed address as `username`/`password`: the
/// long-term credential dance (an unauthenticated request learns realm and nonce, the second
/// carries MESSAGE-INTEGRITY). The relayed address, or the error code coturn answered.
fn allocate(
    server: SocketAddr,
    username: &str,
    password: &str,
) -> anyhow::Result<Result<SocketAddr, u16>> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(Duration::from_secs(3)))?;
    let transport = vec![17, 0, 0, 0];
    let exchange = |request: Vec<u8>, tid: [u8; 12]| -> anyhow::Result<Message> {
        for _ in 0..3 {
            socket.send_to(&request, server)?;
            let mut buf = [0u8; 1500];
            match socket.recv_from(&mut buf) {
                Ok((n, _)) => {
                    let (answer, got) = Message::decode(&buf[..n])?;
                    if got == tid {
                        return Ok(answer);
                    }
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => return Err(e.into()),
            }
        }
        anyhow::bail!("no answer from the TURN server at {server}")
    };
    let first_tid: [u8; 12] = *b"chat-test-01";
    let first = Message {
        kind: ALLOCATE,
        attributes: vec![(REQUESTED_TRANSPORT, transport.clone())],
    };
    let challenge = exchange(first.encode(&first_tid, None), first_tid)?;
    anyhow::ensure!(
        challenge.kind == ALLOCATE_ERROR && challenge.error_code() == Some(401),
        "expected a 401 challenge, got type {:#06x} code {:?}",
        challenge.kind,
        challenge.error_code()
    );
    let realm = challenge.get(REALM).unwrap_or_default().to_vec();
    let nonce = challenge.get(NONCE).unwrap_or_default().to_vec();
    let mut key_input = format!("{username}:").into_bytes();
    key_input.extend_from_slice(&realm);
    key_input.extend_from_slice(format!(":{password}").as_bytes());
    let key = Md5::digest(&key_input);
    let second_tid: [u8; 12] = *b"chat-test-02";
    let second = Message {
        kind: ALLOCATE,
        attributes: vec![
            (REQUESTED_TRANSPORT, transport),
            (USERNAME, username.as_bytes().to_vec()),
            (REALM, realm),
            (NONCE, nonce),
        ],
    };
    let answer = exchange(second.encode(&second_tid, Some(&key)), second_tid)?;
    if answer.kind != ALLOCATE_OK {
        return Ok(Err(answer.error_code().unwrap_or(0)));
    }
    let relayed = answer
        .get(XOR_RELAYED_ADDRESS)
        .filter(|v| v.len() >= 8 && v[1] == 0x01)
        .ok_or_else(|| anyhow::anyhow!("no IPv4 XOR-RELAYED-ADDRESS in the answer"))?;
    let port = u16::from_be_bytes([relayed[2], relayed[3]]) ^ (COOKIE >> 16) as u16;
    let ip = u32::from_be_bytes([relayed[4], relayed[5], relayed[6], relayed[7]]) ^ COOKIE;
    Ok(Ok(SocketAddr::from((ip.to_be_bytes(), port))))
}

/// `turn:host:port?transport=udp` -> host:port.
fn udp_server(urls: &serde_json::Value) -> anyhow::Result<SocketAddr> {
    let url = urls
        .as_array()
        .and_then(|u| {
            u.iter()
                .filter_map(|u| u.as_str())
                .find(|u| u.ends_with("transport=udp"))
        })
        .ok_or_else(|| anyhow::anyhow!("no UDP TURN URL in {urls}"))?;
    let host_port = url
        .trim_start_matches("turn:")
        .split('?')
        .next()
        .unwrap_or_default();
    Ok(host_port.parse()?)
}

fn secret() -> anyhow::Result<Vec<u8>> {
    let path = std::env::var("CHAT_TURN_SECRET_FILE")?;
    Ok(std::fs::read_to_string(path)?.trim().as_bytes().to_vec())
}

fn sign(secret: &[u8], username: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("any key length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[tokio::test]
async fn turn_credentials_open_coturn_and_expire() -> anyhow::Result<()> {
    let entry = env::entry_url();
    let api = Api::new(&entry);
    let user = api.user("turn").await?;
    let http = reqwest::Client::new();
    let url = format!("{entry}/v1/calls/turn-credentials");

    // Anonymous or with a forged token: 401.
    let anonymous = http.post(&url).send().await?;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let forged = http.post(&url).bearer_auth("not.a.token").send().await?;
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);

    // A signed-in user: coturn's REST scheme, signed with the shared secret, for this user.
    let answer = http
        .post(&url)
        .bearer_auth(&user.access_token)
        .send()
        .await?;
    assert_eq!(answer.status(), StatusCode::OK);
    let body: serde_json::Value = answer.json().await?;
    let username = body["username"].as_str().unwrap_or_default().to_string();
    let credential = body["credential"].as_str().unwrap_or_default().to_string();
    let ttl = body["ttl"].as_u64().unwrap_or_default();
    let (expiry, owner) = username.split_once(':').unwrap_or_default();
    assert_eq!(owner, user.user_id, "{body}");
    let expiry: u64 = expiry.parse()?;
    assert!(ttl >= 60, "{body}");
    assert!(expiry.abs_diff(now() + ttl) <= 5, "{body}");
    let secret = secret()?;
    assert_eq!(credential, sign(&secret, &username));

    // coturn grants a relayed address with them.
    let server = udp_server(&body["urls"])?;
    let relayed = allocate(server, &username, &credential)?;
    assert!(
        relayed.is_ok(),
        "coturn refused fresh credentials: {relayed:?}"
    );

    // Expired (signed correctly, expiry a minute ago) or forged: refused.
    let old = format!("{}:{}", now() - 60, user.user_id);
    let expired = allocate(server, &old, &sign(&secret, &old))?;
    assert_eq!(expired, Err(401), "expired credentials");
    let forged = allocate(server, &username, &sign(b"another secret", &username))?;
    assert_eq!(forged, Err(401), "a password not made with the secret");
    let extended = format!("{}:{}", now() + 10 * 86_400, user.user_id);
    let stretched = allocate(server, &extended, &credential)?;
    assert_eq!(stretched, Err(401), "an expiry moved by the client");
    Ok(())
}

#[tokio::test]
async fn turn_credentials_are_rate_limited_per_user() -> anyhow::Result<()> {
    let entry = env::entry_url();
    let api = Api::new(&entry);
    let user = api.user("turnrate").await?;
    let http = reqwest::Client::new();
    let url = format!("{entry}/v1/calls/turn-credentials");
    let mut limited = None;
    for _ in 0..15 {
        let answer = http
            .post(&url)
            .bearer_auth(&user.access_token)
            .send()
            .await?;
        if answer.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(answer);
            break;
        }
        assert_eq!(answer.status(), StatusCode::OK);
    }
    let limited =
        limited.ok_or_else(|| anyhow::anyhow!("15 requests in a row were all answered"))?;
    assert!(limited.headers().contains_key("retry-after"));
    let body: serde_json::Value = limited.json().await?;
    assert_eq!(body["error"]["code"], "rate_limited");
    // Another user's budget is its own.
    let other = api.user("turnrate").await?;
    let answer = http
        .post(&url)
        .bearer_auth(&other.access_token)
        .send()
        .await?;
    assert_eq!(answer.status(), StatusCode::OK);
    Ok(())
}
