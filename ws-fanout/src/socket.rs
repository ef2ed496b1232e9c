//! One client socket: authentication, the client's frames, and the node's frames to it.
//!
//! The socket's task owns the connection. Frames for it arrive through its bounded outlet
//! queue (events, backlogs, acks) and are written in queue order; client frames are answered
//! on the same queue, so an answer never overtakes an event queued before it. A bad frame gets
//! an error frame and the socket lives on; only an oversize frame (1009), a failed
//! authentication (1008), an expired or revoked token, idleness, falling behind and shutdown
//! end it, each with its own close code and reason.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::SinkExt;
use platform::auth::{AccessClaims, TokenVerifier};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::access::Access;
use crate::commands::{CallCommand, CommandsClient};
use crate::config::Config;
use crate::error::FanoutError;
use crate::heads::Heads;
use crate::hub::{Hub, Joined, Outlet, Standing};
use crate::interest::Interest;
use crate::limits::{Limits, SocketCounts};
use crate::line::Frame;
use crate::metrics::Metrics;
use crate::presence::Presence;
use crate::protocol::{self, ClientFrame};
use crate::sessions::Sessions;
use crate::signals::{Outgoing, Pending, QUEUED_SIGNALS, SignalingClient};
use crate::typing::{Throttle, Typing};

/// Close codes (RFC 6455 and the 4000 range for the application).
pub mod close {
    pub const GOING_AWAY: u16 = 1001;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const TRY_AGAIN: u16 = 1013;
    /// The access token expired or its session was revoked: refresh, then reconnect.
    pub const TOKEN: u16 = 4001;
    /// No frame and no pong for the idle timeout.
    pub const IDLE: u16 = 4002;
}

/// Everything a socket needs from its node.
pub struct Node {
    pub config: Config,
    pub hub: Arc<Hub>,
    pub heads: Heads,
    pub access: Access,
    pub verifier: TokenVerifier,
    pub commands: CommandsClient,
    pub signaling: SignalingClient,
    pub metrics: Metrics,
    pub stop: CancellationToken,
    pub typing: Arc<Typing>,
    pub presence: Arc<Presence>,
    pub limits: Limits,
    pub sockets_per_user: Arc<SocketCounts>,
    /// Open sessions, ended by revocations from the log (`crate::sessions`).
    pub sessions: Arc<Sessions>,
    /// Whether the fast channel's subscription is live (`crate::fast`): until it is, typing,
    /// presence and call signals for this node's sockets would be lost, so it is not ready.
    pub fast_subscribed: Arc<std::sync::atomic::AtomicBool>,
    /// The rooms and partitions this node follows (`crate::interest`).
    pub interest: Arc<Interest>,
    next_id: AtomicU64,
}

impl Node {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        hub: Arc<Hub>,
        heads: Heads,
        verifier: TokenVerifier,
        http: reqwest::Client,
        metrics: Metrics,
        stop: CancellationToken,
        typing: Arc<Typing>,
        presence: Arc<Presence>,
        interest: Arc<Interest>,
    ) -> Result<Self, FanoutError> {
        let access = Access::new(&config.brokers, interest.clone())?;
        let commands = CommandsClient::new(http.clone(), &config.commands_url);
        let signaling = SignalingClient::new(http, &config.signaling_url);
        let limits = Limits::new(&config.budgets, &metrics.refused);
        Ok(Self {
            limits,
            sockets_per_user: Arc::default(),
            sessions: Arc::default(),
            fast_subscribed: Arc::default(),
            config,
            hub,
            heads,
            access,
            verifier,
            commands,
            signaling,
            metrics,
            stop,
            typing,
            presence,
            interest,
            next_id: AtomicU64::new(1),
        })
    }
}

impl Node {
    /// A node-unique id for a socket or a poll's outlet.
    pub fn next_socket_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// `send`s of one socket awaiting the write API's answer: each holds an HTTP call, so one
/// socket cannot make the node open an unbounded number of them.
const SENDS_IN_FLIGHT: usize = 8;

struct Session {
    claims: AccessClaims,
    token: String,
    outlet: Outlet,
    rooms: BTreeSet<String>,
    /// In-flight `send` frames of this socket (each is an HTTP command).
    sends: Arc<Semaphore>,
    /// This socket's call signals on their way to the relay, in order (started on the first).
    signals: Option<Outgoing>,
    typing: Throttle,
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn text(frame: String) -> Frame {
    Frame::from(frame)
}

/// A write that gives up after a few seconds: a peer that does not read must not hold the
/// task (and the memory of its buffers) forever.
/// How long a socket that fell behind has to take its resync notice and close frame: a client
/// that paused (a backgrounded tab, a debugger) learns why it was dropped instead of seeing a
/// bare disconnect.
const BEHIND_NOTICE_GRACE: Duration = Duration::from_secs(30);

async fn send_bounded(socket: &mut WebSocket, message: Message) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(5), socket.send(message)).await,
        Ok(Ok(()))
    )
}

async fn close_with(socket: &mut WebSocket, code: u16, reason: &str) {
    if send_bounded(socket, close_message(code, reason)).await {
        finish_close(socket).await;
    }
}

/// Reads until the client's own close frame (briefly): dropping a connection that still has
/// unread client frames (pongs, late sends) makes the kernel reset it, and a reset discards
/// what the client had not read yet, our close frame included.
async fn finish_close(socket: &mut WebSocket) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

fn close_message(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(reason.to_string()),
    }))
}

fn text_message(frame: String) -> Message {
    Message::Text(frame.into())
}

/// Serves one upgraded socket until it ends.
pub async fn serve(node: Arc<Node>, mut socket: WebSocket, url_token: Option<String>) {
    let Some((claims, token)) = authenticate(&node, &mut socket, url_token).await else {
        return;
    };
    let id = node.next_socket_id();
    let (outlet, rx) = Outlet::new(id, claims.sub.clone(), node.config.socket_queue);
    let _place =
        match node
            .sockets_per_user
            .take(&claims.sub, node.config.max_sockets_per_user, &outlet)
        {
            Ok(place) => place,
            Err(e) => {
                send_bounded(&mut socket, text_message(e.frame(None))).await;
                close_with(&mut socket, close::POLICY, e.code()).await;
                for counter in [&node.metrics.closes, &node.metrics.connections] {
                    counter.with_label_values(&["too_many_sockets"]).inc();
                }
                return;
            }
        };
    let mut session = Session {
        claims,
        token,
        outlet,
        rooms: BTreeSet::new(),
        sends: Arc::new(Semaphore::new(SENDS_IN_FLIGHT)),
        signals: None,
        typing: Throttle::default(),
    };
    let watch = node.sessions.watch(&session.claims.sid);
    node.metrics
        .connections
        .with_label_values(&["accepted"])
        .inc();
    node.metrics.sockets.inc();
    let user = session.claims.sub.clone();
    node.presence.connected(id, &user).await;
    let reason = run(&node, &mut socket, &mut session, rx, &watch.revoked).await;
    for room in &session.rooms {
        node.hub.leave(room, session.outlet.id);
    }
    if reason == "shutdown" {
        // The client reconnects to another node within seconds: its connection here simply
        // lapses, so a restart does not flap the user offline and online.
        node.presence.forget(id);
    } else {
        node.presence.disconnected(id, &user).await;
    }
    node.metrics.sockets.dec();
    node.metrics.closes.with_label_values(&[reason]).inc();
}

/// Token from the URL or a first `auth` frame; on failure an error frame and a 1008 close.
async fn authenticate(
    node: &Node,
    socket: &mut WebSocket,
    url_token: Option<String>,
) -> Option<(AccessClaims, String)> {
    let token = match url_token {
        Some(t) => Ok(t),
        None => match tokio::time::timeout(node.config.auth_timeout, socket.recv()).await {
            Err(_) => Err(FanoutError::Invalid(
                "send {\"type\":\"auth\",\"access_token\":...} first".into(),
            )),
            Ok(None) | Ok(Some(Err(_))) => return None,
            Ok(Some(Ok(Message::Text(t)))) => match protocol::parse(t.as_str()).frame {
                Ok(ClientFrame::Auth { access_token }) => Ok(access_token),
                Ok(_) => Err(FanoutError::Invalid(
                    "the first frame must be {\"type\":\"auth\",\"access_token\":...}".into(),
                )),
                Err(e) => Err(e),
            },
            Ok(Some(Ok(_))) => Err(FanoutError::Invalid(
                "the first frame must be a JSON text auth frame".into(),
            )),
        },
    };
    let verified = match token {
        Ok(token) => node
            .verifier
            .verify(&token)
            .await
            .map(|claims| (claims, token))
            .map_err(FanoutError::from),
        Err(e) => Err(e),
    };
    match verified {
        Ok(ok) => Some(ok),
        Err(e) => {
            send_bounded(socket, text_message(e.frame(None))).await;
            close_with(socket, close::POLICY, e.code()).await;
            for counter in [&node.metrics.closes, &node.metrics.connections] {
                counter.with_label_values(&["auth"]).inc();
            }
            None
        }
    }
}

/// The socket's loop; returns why it ended (a metric label).
async fn run(
    node: &Arc<Node>,
    socket: &mut WebSocket,
    session: &mut Session,
    mut rx: mpsc::Receiver<Frame>,
    revoked: &CancellationToken,
) -> &'static str {
    let config = &node.config;
    let expires_in = Duration::from_secs((session.claims.exp - now_secs()).max(0) as u64);
    let expiry = tokio::time::sleep(expires_in);
    tokio::pin!(expiry);
    let mut ping = tokio::time::interval(config.ping_every);
    ping.tick().await;
    // Revocation (logout) is checked on every verify; an open socket re-verifies once a minute.
    let mut recheck = tokio::time::interval(Duration::from_secs(60));
    recheck.tick().await;
    let mut last_heard = Instant::now();
    let behind = session.outlet.behind.clone();
    // Made once, not once per turn of the loop: a fresh `cancelled()` registers with its token
    // (a lock, and the node's stop token is shared by every socket) and deregisters when
    // another branch wins, on every frame written (measured with perf under load).
    let stopping = node.stop.cancelled();
    let fell_behind = behind.cancelled();
    let revocation = revoked.cancelled();
    tokio::pin!(stopping, fell_behind, revocation);
    loop {
        tokio::select! {
            biased;
            _ = &mut stopping => {
                close_with(socket, close::GOING_AWAY, "server restarting; reconnect with since_seq").await;
                return "shutdown";
            }
            _ = &mut fell_behind => {
                // What is still queued is dropped: the client pages history instead.
                // The client is not reading, so the notice waits behind what the kernel already
                // buffers; it gets one grace period in all, then the connection is dropped.
                rx.close();
                // The client's close reply comes only after it has read everything the kernels
                // buffered before the notice, so that wait shares the grace too: a shorter one
                // drops the connection while the client still reads, and the pongs it then sends
                // to a closed socket make the kernel reset it, losing the notice after all.
                let notice = async {
                    for room in &session.rooms {
                        node.metrics.resyncs.with_label_values(&["behind"]).inc();
                        socket.send(text_message(protocol::resync_frame(room, "socket fell behind"))).await?;
                    }
                    socket.send(close_message(close::TRY_AGAIN, "fell behind; resync")).await?;
                    while let Some(message) = socket.recv().await {
                        if matches!(message?, Message::Close(_)) {
                            break;
                        }
                    }
                    Ok::<_, axum::Error>(())
                };
                let _ = tokio::time::timeout(BEHIND_NOTICE_GRACE, notice).await;
                return "behind";
            }
            _ = &mut revocation => {
                let e = FanoutError::Auth(platform::auth::AuthError::Revoked);
                send_bounded(socket, text_message(e.frame(None))).await;
                close_with(socket, close::TOKEN, e.code()).await;
                return "token_revoked";
            }
            _ = &mut expiry => {
                send_bounded(socket, text_message(protocol::error_frame("token_expired", "the access token expired; refresh it and reconnect", None))).await;
                close_with(socket, close::TOKEN, "token_expired").await;
                return "token_expired";
            }
            _ = recheck.tick() => {
                if let Err(e) = node.verifier.verify(&session.token).await {
                    let e = FanoutError::from(e);
                    if e.code() != "auth_unavailable" {
                        send_bounded(socket, text_message(e.frame(None))).await;
                        close_with(socket, close::TOKEN, e.code()).await;
                        return "token_revoked";
                    }
                }
            }
            frame = rx.recv() => {
                let Some(frame) = frame else { return "closed" };
                // A client that stops reading blocks this write; the queue then fills, the hub
                // marks the socket as fallen behind, and that ends the wait.
                tokio::select! {
                    written = write_queued(socket, frame, &mut rx) => match written {
                        Ok(frames) => node.metrics.frames_out.inc_by(frames),
                        Err(_) => return "write_error",
                    },
                    _ = &mut fell_behind => {}
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() >= config.idle_timeout {
                    close_with(socket, close::IDLE, "idle timeout").await;
                    return "idle";
                }
                if !send_bounded(socket, Message::Ping(Default::default())).await {
                    return "write_error";
                }
            }
            incoming = socket.recv() => {
                last_heard = Instant::now();
                match incoming {
                    None => return "client_closed",
                    Some(Err(e)) => {
                        // tungstenite refuses an oversize frame or message with a capacity error.
                        let message = e.to_string();
                        if message.contains("too long") || message.contains("Space limit") || message.contains("Capacity") || message.contains("capacity") {
                            close_with(socket, close::TOO_BIG, "frame too large").await;
                            return "too_big";
                        }
                        return "read_error";
                    }
                    Some(Ok(Message::Text(t))) => handle(node, session, t.as_str()).await,
                    Some(Ok(Message::Binary(_))) => {
                        node.metrics.frames_in.with_label_values(&["binary", "error"]).inc();
                        session.outlet.push(text(protocol::error_frame("invalid_frame", "binary frames are not supported; send JSON text", None)));
                    }
                    Some(Ok(Message::Close(_))) => return "client_closed",
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                }
            }
        }
    }
}

/// Bytes of queued frames written with one flush at most.
pub const WRITE_BATCH_BYTES: usize = 16 * 1024;

/// Writes `first` and the frames queued behind it (up to [`WRITE_BATCH_BYTES`]) with one
/// flush: a socket with a backlog costs one write to the kernel per wake-up, not one per frame,
/// which is what lets a busy node catch up instead of falling further behind. Frames keep
/// their queue order.
async fn write_queued(
    socket: &mut WebSocket,
    first: Frame,
    rx: &mut mpsc::Receiver<Frame>,
) -> Result<u64, axum::Error> {
    let mut bytes = first.len();
    socket.feed(Message::Text(first)).await?;
    let mut frames = 1;
    while bytes < WRITE_BATCH_BYTES {
        let Ok(next) = rx.try_recv() else { break };
        bytes += next.len();
        socket.feed(Message::Text(next)).await?;
        frames += 1;
    }
    socket.flush().await?;
    Ok(frames)
}

fn frame_type(frame: &ClientFrame) -> &'static str {
    match frame {
        ClientFrame::Auth { .. } => "auth",
        ClientFrame::Subscribe { .. } => "subscribe",
        ClientFrame::Unsubscribe { .. } => "unsubscribe",
        ClientFrame::Send { .. } => "send",
        ClientFrame::Typing { .. } => "typing",
        ClientFrame::Call { .. } => "call",
        ClientFrame::Signal { .. } => "signal",
        ClientFrame::Ping => "ping",
    }
}

async fn handle(node: &Arc<Node>, session: &mut Session, text_frame: &str) {
    let parsed = protocol::parse(text_frame);
    let reference = parsed.reference;
    let frame = match parsed.frame {
        Ok(f) => f,
        Err(e) => {
            node.metrics
                .frames_in
                .with_label_values(&["invalid", "error"])
                .inc();
            session.outlet.push(text(e.frame(reference.as_deref())));
            return;
        }
    };
    let kind = frame_type(&frame);
    if let Err(e) = node.limits.frames.check(&session.claims.sub) {
        node.metrics
            .frames_in
            .with_label_values(&[kind, "refused"])
            .inc();
        session
            .outlet
            .push(text(FanoutError::from(e).frame(reference.as_deref())));
        return;
    }
    let result = match frame {
        ClientFrame::Ping => {
            session.outlet.push(text(protocol::pong_frame()));
            Ok(())
        }
        ClientFrame::Auth { .. } => Err(FanoutError::Invalid("already authenticated".into())),
        ClientFrame::Subscribe { room_id, since_seq } => {
            subscribe(node, session, &room_id, since_seq, reference.as_deref()).await
        }
        ClientFrame::Unsubscribe { room_id } => {
            node.hub.leave(&room_id, session.outlet.id);
            session.rooms.remove(&room_id);
            Ok(())
        }
        ClientFrame::Send {
            room_id,
            client_msg_id,
            content,
            reply_to,
        } => send(node, session, room_id, client_msg_id, content, reply_to),
        ClientFrame::Typing { room_id } => typing(node, session, &room_id).await,
        ClientFrame::Call { room_id, command } => {
            call(node, session, room_id, command, reference.clone())
        }
        ClientFrame::Signal {
            call_id,
            to,
            payload,
        } => {
            let outgoing = session.signals.get_or_insert_with(|| {
                Outgoing::start(
                    node.signaling.clone(),
                    session.token.clone(),
                    session.outlet.clone(),
                )
            });
            let pending = Pending {
                call_id,
                to,
                payload,
                reference: reference.clone(),
            };
            if outgoing.queue(pending) {
                Ok(())
            } else {
                Err(FanoutError::TooManyInFlight(format!(
                    "{QUEUED_SIGNALS} signals of this socket wait for the relay; slow down"
                )))
            }
        }
    };
    let outcome = if result.is_ok() { "ok" } else { "error" };
    node.metrics
        .frames_in
        .with_label_values(&[kind, outcome])
        .inc();
    if let Err(e) = result {
        session.outlet.push(text(e.frame(reference.as_deref())));
    }
}

async fn subscribe(
    node: &Arc<Node>,
    session: &mut Session,
    room_id: &str,
    since: Option<i64>,
    reference: Option<&str>,
) -> Result<(), FanoutError> {
    let max = node.config.max_subscriptions;
    if session.rooms.len() >= max && !session.rooms.contains(room_id) {
        return Err(FanoutError::TooMany(
            "too_many_subscriptions",
            format!("a socket may subscribe to {max} rooms; unsubscribe from one first"),
        ));
    }
    node.access
        .check(&node.hub, &node.heads, room_id, &session.claims.sub)
        .await?;
    // Re-subscribing restarts the room's stream from `since`.
    node.hub.leave(room_id, session.outlet.id);
    for attempt in 0..3 {
        let greeting =
            |head: Option<i64>| text(protocol::subscribed_frame(room_id, head, reference));
        match node.hub.join(room_id, since, &session.outlet, greeting) {
            Joined::Live { .. } => {
                session.rooms.insert(room_id.to_string());
                node.metrics.subscriptions.inc();
                return Ok(());
            }
            Joined::Unknown if attempt < 2 => node.heads.establish(&node.hub, room_id).await?,
            Joined::Unknown => {
                return Err(FanoutError::Unavailable(
                    "cannot place the room yet; try again".into(),
                ));
            }
            // The client saw it elsewhere (another node, the history) and this node has not
            // read that far yet, e.g. it just began to read the room's partition.
            Joined::Ahead { .. } if attempt < 2 => node.access.catch_up(&node.hub, room_id).await?,
            Joined::TooOld { oldest_kept } => {
                node.metrics.resyncs.with_label_values(&["too_old"]).inc();
                session.outlet.push(text(protocol::resync_frame(
                    room_id,
                    &format!("the gap is older than this node keeps (oldest kept seq {oldest_kept}); page history, then subscribe with the last seq you have"),
                )));
                return Ok(());
            }
            Joined::Ahead { head } => {
                return Err(FanoutError::Invalid(format!(
                    "since_seq {} is past the room's last event ({head})",
                    since.unwrap_or_default()
                )));
            }
            // The outlet is marked; the socket loop sends the resyncs and closes.
            Joined::Behind => return Ok(()),
            Joined::Refused(verdict) => return crate::access::allowed(verdict),
        }
    }
    Ok(())
}

/// Only a member subscribed to the room on this socket may show as typing in it.
async fn typing(node: &Arc<Node>, session: &mut Session, room_id: &str) -> Result<(), FanoutError> {
    if !session.rooms.contains(room_id) {
        return Err(FanoutError::Invalid(
            "subscribe to the room before sending typing indicators to it".into(),
        ));
    }
    let user = &session.claims.sub;
    let mut standing = node.hub.standing(room_id, user);
    if standing != Some(Standing::Member) {
        // Maybe joined a moment ago: read what the log holds now before saying no.
        node.access.catch_up(&node.hub, room_id).await?;
        standing = node.hub.standing(room_id, user);
    }
    let member = match standing {
        Some(standing) => standing == Standing::Member,
        None => node.heads.is_member(room_id, user).await?,
    };
    if !member {
        return Err(FanoutError::Forbidden(
            "only members of a room can type in it".into(),
        ));
    }
    if !session.typing.allow(room_id) {
        node.metrics.typing.with_label_values(&["absorbed"]).inc();
        return Ok(());
    }
    node.typing.publish(room_id, user).await
}

/// Runs one HTTP command of this socket (a `send`, a call command) in a task of its own,
/// within the socket's bound of commands awaiting answers, and queues the frame its answer
/// makes.
fn in_flight<F, Fut>(node: &Arc<Node>, session: &Session, answer: F) -> Result<(), FanoutError>
where
    F: FnOnce(Arc<Node>, String) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = String> + Send,
{
    let Ok(permit) = session.sends.clone().try_acquire_owned() else {
        return Err(FanoutError::TooManyInFlight(format!(
            "{SENDS_IN_FLIGHT} sends and call commands of this socket await their answers; wait for them"
        )));
    };
    let (node, outlet, token) = (node.clone(), session.outlet.clone(), session.token.clone());
    tokio::spawn(async move {
        let _permit = permit;
        let frame = answer(node, token).await;
        outlet.push(text(frame));
    });
    Ok(())
}

/// A socket's call lifecycle frame is the call command of API.md made with the caller's token
/// (same rules, same budget); the answer comes back as `call.accepted` or `error`. The call's
/// events reach every member through the room's stream like any other event.
fn call(
    node: &Arc<Node>,
    session: &Session,
    room_id: String,
    command: CallCommand,
    reference: Option<String>,
) -> Result<(), FanoutError> {
    in_flight(node, session, move |node, token| async move {
        let reference = reference.as_deref();
        match node.commands.call(&token, &room_id, &command).await {
            Ok(o) => protocol::call_accepted_frame(
                command.name(),
                &room_id,
                o.call_id.as_deref().or(command.call_id()),
                o.seq,
                reference,
            ),
            Err(refused) => refused.frame(reference),
        }
    })
}

/// A socket `send` is the HTTP post of API.md made with the caller's token, so it gets exactly
/// the same validation, idempotency and rate limits; the answer comes back as `ack` or `error`.
fn send(
    node: &Arc<Node>,
    session: &Session,
    room_id: String,
    client_msg_id: String,
    content: String,
    reply_to: Option<String>,
) -> Result<(), FanoutError> {
    in_flight(node, session, move |node, token| async move {
        let posted = node
            .commands
            .post(
                &token,
                &room_id,
                &client_msg_id,
                &content,
                reply_to.as_deref(),
            )
            .await;
        match posted {
            Ok(p) => protocol::ack_frame(&client_msg_id, &p.message_id, p.seq),
            Err(refused) => refused.frame(Some(&client_msg_id)),
        }
    })
}
