// The screens. Every piece of user content is rendered as React text (never as HTML), so a
// message `<img src=x onerror=alert(1)>` shows those characters.

import {
  Component,
  useCallback,
  useEffect,
  useLayoutEffect,
  useMemo,
  useRef,
  useState,
  useSyncExternalStore,
  type FormEvent,
  type KeyboardEvent,
  type ReactNode,
} from "react";
import {
  api,
  ApiError,
  fileBlob,
  login,
  logout,
  onSignedOut,
  register,
  storedUser,
  upload,
  type Attachment,
  type Message,
} from "./api";
import { Store, type Pending } from "./store";

const QUICK_REACTIONS = ["👍", "❤️", "😂", "🎉"];

function message(e: unknown) {
  if (e instanceof ApiError) return e.message;
  return e instanceof Error ? e.message : String(e);
}

/** `#/r/{room}` or `#/r/{room}/{seq}` (a search hit). */
function useRoute(): [string | null, number | undefined] {
  const read = () => {
    const m = /^#\/r\/([^/]+)(?:\/(\d+))?$/.exec(location.hash);
    return m ? ([decodeURIComponent(m[1]), m[2] ? Number(m[2]) : undefined] as const) : null;
  };
  const [route, setRoute] = useState(read);
  useEffect(() => {
    const on = () => setRoute(read());
    window.addEventListener("hashchange", on);
    return () => window.removeEventListener("hashchange", on);
  }, []);
  return route ? [route[0], route[1]] : [null, undefined];
}

export function App() {
  const [user, setUser] = useState<string | null>(storedUser);
  useEffect(() => onSignedOut(() => setUser(null)), []);
  return <Shown>{user ? <Chat me={user} /> : <Auth onIn={setUser} />}</Shown>;
}

/** A fault in the page itself shows what happened and a way back, never a blank screen. */
class Shown extends Component<{ children: ReactNode }, { error: string | null }> {
  state = { error: null as string | null };

  static getDerivedStateFromError(error: unknown) {
    return { error: error instanceof Error ? error.message : String(error) };
  }

  render() {
    if (this.state.error === null) return this.props.children;
    return (
      <main className="auth" role="alert">
        <h1>Something went wrong</h1>
        <p>The page hit an error it could not recover from: {this.state.error}</p>
        <button onClick={() => location.reload()}>Reload</button>
      </main>
    );
  }
}

function Auth({ onIn }: { onIn: (user: string) => void }) {
  const [mode, setMode] = useState<"login" | "register">("login");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e: FormEvent<HTMLFormElement>) => {
    e.preventDefault();
    const form = new FormData(e.currentTarget);
    const field = (name: string) => String(form.get(name) ?? "");
    setBusy(true);
    setError(null);
    try {
      const tokens =
        mode === "login"
          ? await login(field("login"), field("password"))
          : await register(field("email"), field("username"), field("password"));
      onIn(tokens.user_id);
    } catch (err) {
      setError(message(err));
    } finally {
      setBusy(false);
    }
  };
  return (
    <main className="auth">
      <h1>Chat</h1>
      <div role="tablist" aria-label="Account">
        <button role="tab" aria-selected={mode === "login"} onClick={() => setMode("login")}>
          Log in
        </button>
        <button role="tab" aria-selected={mode === "register"} onClick={() => setMode("register")}>
          Register
        </button>
      </div>
      <form onSubmit={submit} aria-label={mode === "login" ? "Log in" : "Register"}>
        {mode === "login" ? (
          <label>
            Username or e-mail
            <input name="login" autoComplete="username" required />
          </label>
        ) : (
          <>
            <label>
              E-mail
              <input name="email" type="email" autoComplete="email" required />
            </label>
            <label>
              Username
              <input name="username" autoComplete="username" required pattern="[a-z0-9_.\-]{3,32}" />
            </label>
          </>
        )}
        <label>
          Password
          <input
            name="password"
            type="password"
            autoComplete={mode === "login" ? "current-password" : "new-password"}
            minLength={8}
            required
          />
        </label>
        <button type="submit" disabled={busy}>
          {mode === "login" ? "Log in" : "Create account"}
        </button>
        {error && (
          <p role="alert" className="error">
            {error}
          </p>
        )}
      </form>
    </main>
  );
}

function useStore(store: Store) {
  useSyncExternalStore(store.subscribe, store.snapshot);
}

function Chat({ me }: { me: string }) {
  const store = useMemo(() => new Store(), []);
  useStore(store);
  const [roomId, aroundSeq] = useRoute();
  const [menu, setMenu] = useState(false);
  useEffect(() => {
    store.start(me).catch((e) => store.fail(e));
    return () => store.stop();
  }, [store, me]);
  useEffect(() => {
    if (!roomId) return;
    void store.open(roomId, aroundSeq);
    setMenu(false);
    return () => store.close(roomId);
  }, [store, roomId, aroundSeq]);
  useEffect(() => {
    const on = () => roomId && store.markRead(roomId);
    document.addEventListener("visibilitychange", on);
    return () => document.removeEventListener("visibilitychange", on);
  }, [store, roomId]);
  return (
    <div className={menu ? "chat menu-open" : "chat"}>
      <header className="top">
        <button className="menu" aria-label="Rooms menu" aria-expanded={menu} onClick={() => setMenu(!menu)}>
          ☰
        </button>
        <strong>Chat</strong>
        <span className={`status ${store.status}`} role="status">
          {store.status === "live" ? "connected" : store.status === "polling" ? "reconnecting (polling)" : "connecting…"}
        </span>
        <span className="me">{store.names.get(me) ?? ""}</span>
        <button onClick={() => void logout()}>Log out</button>
      </header>
      {store.notice && (
        <div role="alert" className="notice">
          {store.notice}
          <button aria-label="Dismiss" onClick={() => ((store.notice = null), store.changed())}>
            ×
          </button>
        </div>
      )}
      {store.ringing && <RingBanner store={store} />}
      <Sidebar store={store} active={roomId} />
      <main className="room">
        {roomId ? <RoomView key={roomId} store={store} roomId={roomId} focusSeq={aroundSeq} /> : <Welcome />}
      </main>
    </div>
  );
}

function Welcome() {
  return (
    <section className="welcome">
      <h2>Pick a room</h2>
      <p>Choose a room on the left, join a public one, or create your own.</p>
    </section>
  );
}

function Sidebar({ store, active }: { store: Store; active: string | null }) {
  const [query, setQuery] = useState("");
  const [hits, setHits] = useState<Message[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const joined = [...store.rooms.values()].filter((r) => r.joined);
  const others = store.publicRooms.filter((r) => !store.rooms.get(r.room_id)?.joined);
  const search = async (e: FormEvent) => {
    e.preventDefault();
    setError(null);
    if (!query.trim()) return setHits(null);
    try {
      setHits((await api.search(query.trim())).messages);
    } catch (err) {
      setError(message(err));
    }
  };
  return (
    <nav className="side" aria-label="Rooms">
      <form role="search" onSubmit={search}>
        <input
          aria-label="Search messages"
          placeholder="Search messages"
          value={query}
          onChange={(e) => setQuery(e.target.value)}
        />
      </form>
      {error && <p role="alert" className="error">{error}</p>}
      {hits && (
        <section aria-label="Search results">
          <h2>
            Results <button onClick={() => setHits(null)}>Clear</button>
          </h2>
          {hits.length === 0 && <p>No messages found.</p>}
          <ul className="hits">
            {hits.map((m) => (
              <li key={m.message_id}>
                <a href={`#/r/${encodeURIComponent(m.room_id)}/${m.seq}`}>
                  <span className="hit-room">{store.rooms.get(m.room_id)?.name ?? "room"}</span>
                  <span className="hit-text">{m.content}</span>
                </a>
              </li>
            ))}
          </ul>
        </section>
      )}
      <h2>Your rooms</h2>
      <ul className="rooms">
        {joined.map((r) => (
          <li key={r.room_id}>
            <a
              href={`#/r/${encodeURIComponent(r.room_id)}`}
              aria-current={active === r.room_id ? "page" : undefined}
            >
              <span className="room-name">
                {r.visibility === "private" ? "🔒 " : "# "}
                {r.name}
              </span>
              {r.unread > 0 && (
                <span className="badge" aria-label={`${r.unread} unread`}>
                  {r.unread}
                </span>
              )}
              {r.last && (
                <span className="last">
                  {store.name(r.last.user_id)}: {r.last.deleted ? "(deleted)" : r.last.content || "📎"}
                </span>
              )}
            </a>
          </li>
        ))}
        {joined.length === 0 && <li className="empty">No rooms yet.</li>}
      </ul>
      {store.invitations.length > 0 && (
        <section aria-label="Invitations">
          <h2>Invitations</h2>
          <ul className="rooms">
            {store.invitations.map((r) => (
              <li key={r.room_id} className="invitation">
                <span className="room-name">🔒 {r.name}</span>
                <button
                  aria-label={`Join ${r.name}`}
                  onClick={() =>
                    void store
                      .join(r.room_id)
                      .then(() => (location.hash = `#/r/${encodeURIComponent(r.room_id)}`))
                      .catch((e) => store.fail(e))
                  }
                >
                  Join
                </button>
              </li>
            ))}
          </ul>
        </section>
      )}
      <NewRoom store={store} />
      {others.length > 0 && (
        <>
          <h2>Public rooms</h2>
          <ul className="rooms">
            {others.slice(0, 20).map((r) => (
              <li key={r.room_id}>
                <a href={`#/r/${encodeURIComponent(r.room_id)}`}>
                  <span className="room-name"># {r.name}</span>
                  <span className="last">{r.member_count} members</span>
                </a>
              </li>
            ))}
          </ul>
        </>
      )}
    </nav>
  );
}

function NewRoom({ store }: { store: Store }) {
  const [error, setError] = useState<string | null>(null);
  const details = useRef<HTMLDetailsElement>(null);
  const submit = async (e: FormEvent<HTMLFormElement>) => {
    e.preventDefault();
    const formEl = e.currentTarget;
    const form = new FormData(formEl);
    setError(null);
    try {
      const { room_id } = await api.createRoom(
        String(form.get("name")).trim(),
        form.get("visibility") === "private" ? "private" : "public",
        String(form.get("topic") ?? "").trim() || undefined,
      );
      formEl.reset();
      if (details.current) details.current.open = false;
      await store.loadRooms();
      location.hash = `#/r/${encodeURIComponent(room_id)}`;
    } catch (err) {
      setError(message(err));
    }
  };
  return (
    <details className="new-room" ref={details}>
      <summary>New room</summary>
      <form onSubmit={submit} aria-label="New room">
        <label>
          Name
          <input name="name" required maxLength={100} />
        </label>
        <label>
          Topic
          <input name="topic" maxLength={500} />
        </label>
        <label>
          Visibility
          <select name="visibility" defaultValue="public">
            <option value="public">Public</option>
            <option value="private">Private</option>
          </select>
        </label>
        <button type="submit">Create room</button>
        {error && <p role="alert" className="error">{error}</p>}
      </form>
    </details>
  );
}

function RoomView({ store, roomId, focusSeq }: { store: Store; roomId: string; focusSeq?: number }) {
  const room = store.rooms.get(roomId);
  const t = store.timeline(roomId);
  const [replyTo, setReplyTo] = useState<Message | null>(null);
  const [showMembers, setShowMembers] = useState(false);
  if (t.error) {
    return (
      <section className="room-error">
        <p role="alert">{t.error}</p>
        <a href="#/">Back</a>
      </section>
    );
  }
  if (!room) return <p className="loading">Loading…</p>;
  const typing = [...t.typing.entries()]
    .filter(([, until]) => until > Date.now())
    .map(([user]) => store.name(user));
  return (
    <>
      <header className="room-head">
        <h1>
          {room.visibility === "private" ? "🔒 " : "# "}
          {room.name}
        </h1>
        {room.topic && <p className="topic">{room.topic}</p>}
        {room.joined && <CallButton store={store} roomId={roomId} />}
        <button aria-expanded={showMembers} onClick={() => setShowMembers(!showMembers)}>
          Members
        </button>
        {room.joined && (
          <button onClick={() => void store.leave(roomId).then(() => (location.hash = "#/"), (e) => store.fail(e))}>
            Leave
          </button>
        )}
      </header>
      {store.session?.roomId === roomId && <CallPanel store={store} />}
      {showMembers && <Members store={store} roomId={roomId} />}
      <Timeline store={store} roomId={roomId} focusSeq={focusSeq} onReply={setReplyTo} />
      <p className="typing" aria-live="polite">
        {typing.length > 0 ? `${typing.join(", ")} ${typing.length > 1 ? "are" : "is"} typing…` : ""}
      </p>
      {room.joined ? (
        <Composer store={store} roomId={roomId} replyTo={replyTo} clearReply={() => setReplyTo(null)} />
      ) : (
        <div className="join-bar">
          <button onClick={() => void store.join(roomId).catch((e) => store.fail(e))}>Join this room</button>
        </div>
      )}
    </>
  );
}

/** Start the room's call, or join the one going on. */
function CallButton({ store, roomId }: { store: Store; roomId: string }) {
  const call = store.calls.get(roomId);
  const inIt = store.session?.roomId === roomId;
  if (inIt) return null;
  const run = (work: Promise<unknown>) => void work.catch((e) => store.fail(e));
  if (call) {
    return (
      <button className="call" onClick={() => run(store.joinCall(roomId))}>
        Join call
      </button>
    );
  }
  return (
    <>
      <button className="call" onClick={() => run(store.startCall(roomId, "video"))}>
        Video call
      </button>
      <button className="call" onClick={() => run(store.startCall(roomId, "audio"))}>
        Audio call
      </button>
    </>
  );
}

function RingBanner({ store }: { store: Store }) {
  const ring = store.ringing!;
  const room = store.rooms.get(ring.roomId);
  const answer = () => {
    location.hash = `#/r/${encodeURIComponent(ring.roomId)}`;
    void store.joinCall(ring.roomId).catch((e) => store.fail(e));
  };
  return (
    <div role="alertdialog" aria-label="Incoming call" className="ring">
      <span>
        {store.name(ring.from)} is calling{room ? ` in ${room.name}` : ""} ({ring.media})
      </span>
      <button onClick={answer}>Join</button>
      <button onClick={() => void store.declineCall().catch((e) => store.fail(e))}>Decline</button>
    </div>
  );
}

/** A `<video>` showing a MediaStream (no URL, so nothing for the page's CSP to allow). */
function StreamView({ stream, label, muted }: { stream: MediaStream | null; label: string; muted?: boolean }) {
  const ref = useRef<HTMLVideoElement>(null);
  useEffect(() => {
    if (ref.current && ref.current.srcObject !== stream) ref.current.srcObject = stream;
  });
  return <video ref={ref} aria-label={label} autoPlay playsInline muted={muted} />;
}

function CallPanel({ store }: { store: Store }) {
  const session = store.session!;
  const peers = [...session.peers.entries()];
  return (
    <section className="call-panel" aria-label="Call">
      <div className="videos">
        <StreamView stream={session.local} label="Your video" muted />
        {peers.map(([user, peer]) => (
          <figure key={user}>
            <StreamView stream={peer.remote} label={`Video of ${store.name(user)}`} />
            <figcaption>
              {store.name(user)} · {peer.pc.connectionState}
            </figcaption>
          </figure>
        ))}
      </div>
      {peers.length === 0 && <p>Waiting for others to join…</p>}
      {session.error && <p role="alert">{session.error}</p>}
      <button className="hang-up" onClick={() => void store.hangUp().catch((e) => store.fail(e))}>
        Hang up
      </button>
    </section>
  );
}

function callText(store: Store, m: Message) {
  const c = m.call!;
  const kind = c.media === "audio" ? "Audio call" : "Video call";
  if (c.status === "ringing") return `${kind} from ${store.name(m.user_id)}: ringing`;
  if (c.status === "ongoing") {
    return `${kind}: ongoing with ${c.participants.map((u) => store.name(u)).join(", ")}`;
  }
  const seconds = Math.round(c.duration_ms / 1000);
  const length = `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, "0")}`;
  switch (c.reason) {
    case "unanswered":
      return `${kind} from ${store.name(m.user_id)}: no answer`;
    case "declined":
      return `${kind} from ${store.name(m.user_id)}: declined`;
    default:
      return c.duration_ms > 0 ? `${kind} ended · ${length}` : `${kind} ended`;
  }
}

function Members({ store, roomId }: { store: Store; roomId: string }) {
  const members = [...(store.members.get(roomId)?.values() ?? [])];
  const myRole = store.role(roomId, store.me);
  const manager = myRole === "owner" || myRole === "moderator";
  const [error, setError] = useState<string | null>(null);
  const act = (work: Promise<unknown>) =>
    work.then(() => store.loadMembers(roomId)).catch((e) => setError(message(e)));
  const invite = (e: FormEvent<HTMLFormElement>) => {
    e.preventDefault();
    const formEl = e.currentTarget;
    const name = String(new FormData(formEl).get("username")).trim();
    setError(null);
    void act(api.invite(roomId, name).then(() => formEl.reset()));
  };
  return (
    <aside className="members" aria-label="Members">
      <ul>
        {members.map((m) => (
          <li key={m.user_id}>
            <span
              className={store.online.has(m.user_id) ? "dot on" : "dot"}
              role="img"
              aria-label={store.online.has(m.user_id) ? "online" : "offline"}
            />
            <span className="member-name">{m.username}</span>
            <span className="role">{m.role}</span>
            {myRole === "owner" && m.user_id !== store.me && (
              <select
                aria-label={`Role of ${m.username}`}
                value={m.role}
                onChange={(e) => void act(api.setRole(roomId, m.user_id, e.target.value))}
              >
                <option value="member">member</option>
                <option value="moderator">moderator</option>
                <option value="owner">owner</option>
              </select>
            )}
            {manager && m.user_id !== store.me && m.role !== "owner" && (
              <button onClick={() => void act(api.ban(roomId, m.user_id))}>Ban {m.username}</button>
            )}
          </li>
        ))}
      </ul>
      <form onSubmit={invite} aria-label="Invite">
        <label>
          Invite by username
          <input name="username" required />
        </label>
        <button type="submit">Invite</button>
      </form>
      {error && <p role="alert" className="error">{error}</p>}
    </aside>
  );
}

function Timeline({
  store,
  roomId,
  focusSeq,
  onReply,
}: {
  store: Store;
  roomId: string;
  focusSeq?: number;
  onReply: (m: Message) => void;
}) {
  const t = store.timeline(roomId);
  const list = useRef<HTMLOListElement>(null);
  const atBottom = useRef(true);
  const firstSeq = t.messages[0]?.seq;
  const lastSeq = t.messages[t.messages.length - 1]?.seq;
  const heightBefore = useRef(0);
  const anchorKey = `chat.anchor.${roomId}`;

  // Stays at the bottom while there; keeps the view still when older pages arrive above.
  useLayoutEffect(() => {
    const el = list.current;
    if (!el) return;
    if (heightBefore.current && el.scrollTop < 50) {
      el.scrollTop += el.scrollHeight - heightBefore.current;
    }
    heightBefore.current = el.scrollHeight;
  }, [firstSeq]);
  useLayoutEffect(() => {
    const el = list.current;
    if (el && atBottom.current && focusSeq === undefined) el.scrollTop = el.scrollHeight;
  }, [lastSeq, t.pending.length, focusSeq]);
  // A search hit, or the place the reader left (kept for a reload).
  useEffect(() => {
    const target = focusSeq ?? Number(sessionStorage.getItem(anchorKey) ?? NaN);
    if (!Number.isFinite(target) || !t.loaded) return;
    const el = list.current?.querySelector(`[data-seq="${target}"]`);
    if (el) {
      el.scrollIntoView({ block: focusSeq !== undefined ? "center" : "start" });
      atBottom.current = false;
      if (focusSeq !== undefined) el.classList.add("focus");
    }
  }, [focusSeq, t.loaded, anchorKey]);

  const onScroll = useCallback(() => {
    const el = list.current;
    if (!el) return;
    atBottom.current = el.scrollHeight - el.scrollTop - el.clientHeight < 40;
    if (atBottom.current) {
      sessionStorage.removeItem(anchorKey);
      store.markRead(roomId);
    } else {
      const top = [...el.querySelectorAll<HTMLElement>("[data-seq]")].find(
        (li) => li.offsetTop >= el.scrollTop,
      );
      if (top?.dataset.seq) sessionStorage.setItem(anchorKey, top.dataset.seq);
    }
    if (el.scrollTop < 40 && t.more && !t.loading) void store.older(roomId);
  }, [store, roomId, t.more, t.loading, anchorKey]);

  const byId = new Map(t.messages.map((m) => [m.message_id, m]));
  return (
    <ol className="timeline" ref={list} onScroll={onScroll} role="log" aria-label="Messages">
      {t.more && t.loaded && (
        <li className="older">
          <button disabled={t.loading} onClick={() => void store.older(roomId)}>
            {t.loading ? "Loading…" : "Load older messages"}
          </button>
        </li>
      )}
      {t.messages.map((m) => (
        <MessageItem
          key={m.message_id}
          store={store}
          roomId={roomId}
          m={m}
          quoted={m.reply_to ? byId.get(m.reply_to) : undefined}
          onReply={onReply}
        />
      ))}
      {t.pending.map((p) => (
        <PendingItem key={p.client_msg_id} store={store} roomId={roomId} p={p} />
      ))}
    </ol>
  );
}

function MessageItem({
  store,
  roomId,
  m,
  quoted,
  onReply,
}: {
  store: Store;
  roomId: string;
  m: Message;
  quoted?: Message;
  onReply: (m: Message) => void;
}) {
  const [editing, setEditing] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const mine = m.user_id === store.me;
  const role = store.role(roomId, store.me);
  const moderator = role === "owner" || role === "moderator";
  const joined = store.rooms.get(roomId)?.joined;
  const run = (work: Promise<unknown>) => work.catch((e) => setError(message(e)));
  const saveEdit = (e: FormEvent<HTMLFormElement>) => {
    e.preventDefault();
    const content = String(new FormData(e.currentTarget).get("content")).trim();
    if (!content) return;
    void run(api.edit(roomId, m.message_id, content).then(() => setEditing(false)));
  };
  const time = new Date(m.timestamp).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  if (m.call) {
    return (
      <li className="msg call-entry" data-seq={m.seq} data-message-id={m.message_id}>
        <span aria-hidden="true">📞 </span>
        <span className="call-text">{callText(store, m)}</span>{" "}
        <time dateTime={new Date(m.timestamp).toISOString()}>{time}</time>
      </li>
    );
  }
  return (
    <li className={mine ? "msg mine" : "msg"} data-seq={m.seq} data-message-id={m.message_id}>
      <div className="meta">
        <span className="author">{store.name(m.user_id)}</span>
        <time dateTime={new Date(m.timestamp).toISOString()}>{time}</time>
        {m.edited_at && !m.deleted && <span className="edited">(edited)</span>}
      </div>
      {m.reply_to && (
        <blockquote className="quote" aria-label="Reply to">
          {quoted
            ? `${store.name(quoted.user_id)}: ${quoted.deleted ? "(deleted)" : quoted.content}`
            : "an earlier message"}
        </blockquote>
      )}
      {m.deleted ? (
        <p className="content deleted">This message was deleted.</p>
      ) : editing ? (
        <form onSubmit={saveEdit} aria-label="Edit message">
          <textarea name="content" aria-label="Edited message" defaultValue={m.content} maxLength={4000} />
          <button type="submit">Save</button>
          <button type="button" onClick={() => setEditing(false)}>
            Cancel
          </button>
        </form>
      ) : (
        <p className="content">{m.content}</p>
      )}
      {!m.deleted && m.attachments.map((a) => <AttachmentView key={a.file_id} a={a} />)}
      {m.reactions.length > 0 && (
        <div className="reactions">
          {m.reactions.map((r) => {
            const on = r.user_ids.includes(store.me);
            return (
              <button
                key={r.emoji}
                aria-pressed={on}
                aria-label={`${r.emoji} ${r.user_ids.length}`}
                disabled={!joined}
                onClick={() => void run(api.react(roomId, m.message_id, r.emoji, !on))}
              >
                {r.emoji} {r.user_ids.length}
              </button>
            );
          })}
        </div>
      )}
      {!m.deleted && joined && (
        <div className="actions">
          <button onClick={() => onReply(m)}>Reply</button>
          {QUICK_REACTIONS.map((emoji) => (
            <button
              key={emoji}
              aria-label={`React ${emoji}`}
              onClick={() => void run(api.react(roomId, m.message_id, emoji, true))}
            >
              {emoji}
            </button>
          ))}
          {mine && <button onClick={() => setEditing(true)}>Edit</button>}
          {(mine || moderator) && <button onClick={() => void run(api.remove(roomId, m.message_id))}>Delete</button>}
        </div>
      )}
      {error && <p role="alert" className="error">{error}</p>}
    </li>
  );
}

function PendingItem({ store, roomId, p }: { store: Store; roomId: string; p: Pending }) {
  return (
    <li className={`msg mine pending ${p.state}`}>
      <p className="content">{p.content}</p>
      {p.state === "sending" ? (
        <span className="sending">sending…</span>
      ) : (
        <span role="alert" className="error">
          Not sent: {p.error}{" "}
          <button onClick={() => void store.retry(roomId, p.client_msg_id)}>Retry</button>
          <button onClick={() => store.discard(roomId, p.client_msg_id)}>Discard</button>
        </span>
      )}
    </li>
  );
}

/** A file's bytes. The message can reach the page before the read side knows the file is
 * shared in the room (the history projector lags the log by a moment): a 404 is asked again. */
async function fetchShared(fileId: string, live: () => boolean): Promise<Blob> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await fileBlob(fileId);
    } catch (e) {
      const lagging = e instanceof ApiError && (e.status === 404 || e.status === 503);
      if (!lagging || attempt >= 8 || !live()) throw e;
      await new Promise((r) => window.setTimeout(r, Math.min(4_000, 250 * 2 ** attempt)));
    }
  }
}

/** Files need the bearer token: fetched as a blob, shown or saved from an object URL. */
function AttachmentView({ a }: { a: Attachment }) {
  const image = a.mime_type.startsWith("image/");
  const [url, setUrl] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    if (!image) return;
    let made: string | null = null;
    let live = true;
    fetchShared(a.file_id, () => live).then(
      (blob) => {
        made = URL.createObjectURL(blob);
        if (live) setUrl(made);
      },
      (e) => live && setError(message(e)),
    );
    return () => {
      live = false;
      if (made) URL.revokeObjectURL(made);
    };
  }, [a.file_id, image]);
  const download = async () => {
    try {
      const blob = await fetchShared(a.file_id, () => true);
      const href = URL.createObjectURL(blob);
      const link = document.createElement("a");
      link.href = href;
      link.download = a.filename;
      document.body.append(link);
      link.click();
      link.remove();
      window.setTimeout(() => URL.revokeObjectURL(href), 10_000);
    } catch (e) {
      setError(message(e));
    }
  };
  return (
    <figure className="attachment">
      {image && url && <img src={url} alt={a.filename} />}
      <figcaption>
        <button className="link" onClick={() => void download()}>
          Download {a.filename}
        </button>{" "}
        <span className="size">{formatSize(a.size)}</span>
      </figcaption>
      {error && <p role="alert" className="error">{error}</p>}
    </figure>
  );
}

function formatSize(bytes: number) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

function Composer({
  store,
  roomId,
  replyTo,
  clearReply,
}: {
  store: Store;
  roomId: string;
  replyTo: Message | null;
  clearReply: () => void;
}) {
  const [text, setText] = useState("");
  const [files, setFiles] = useState<Attachment[]>([]);
  const [progress, setProgress] = useState<number | null>(null);
  const [error, setError] = useState<string | null>(null);
  const input = useRef<HTMLTextAreaElement>(null);
  useEffect(() => {
    if (replyTo) input.current?.focus();
  }, [replyTo]);
  const submit = (e?: FormEvent) => {
    e?.preventDefault();
    const content = text.trim();
    if (!content && files.length === 0) return;
    // A message carries text; a file alone is sent under its name.
    void store.send(roomId, content || files.map((f) => f.filename).join(", "), replyTo?.message_id, files);
    setText("");
    setFiles([]);
    clearReply();
  };
  const onKey = (e: KeyboardEvent<HTMLTextAreaElement>) => {
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      submit();
    }
  };
  const attach = async (list: FileList | null) => {
    if (!list?.length) return;
    setError(null);
    for (const file of list) {
      try {
        setProgress(0);
        const uploaded = await upload(file, setProgress);
        setFiles((f) => [...f, uploaded]);
      } catch (err) {
        setError(message(err));
      } finally {
        setProgress(null);
      }
    }
  };
  return (
    <form className="composer" onSubmit={submit} aria-label="Send a message">
      {replyTo && (
        <div className="replying">
          Replying to {store.name(replyTo.user_id)}: <q>{replyTo.content}</q>
          <button type="button" aria-label="Cancel reply" onClick={clearReply}>
            ×
          </button>
        </div>
      )}
      {files.length > 0 && (
        <ul className="attached" aria-label="Attached files">
          {files.map((f) => (
            <li key={f.file_id}>
              {f.filename}
              <button
                type="button"
                aria-label={`Remove ${f.filename}`}
                onClick={() => setFiles(files.filter((x) => x !== f))}
              >
                ×
              </button>
            </li>
          ))}
        </ul>
      )}
      {progress !== null && (
        <progress aria-label="Upload progress" max={1} value={progress}>
          {Math.round(progress * 100)}%
        </progress>
      )}
      <div className="row">
        <label className="file">
          <span className="visually-hidden">Attach file</span>
          📎
          <input type="file" aria-label="Attach file" onChange={(e) => void attach(e.target.files)} />
        </label>
        <textarea
          ref={input}
          aria-label="Message"
          placeholder="Write a message"
          value={text}
          maxLength={4000}
          rows={1}
          onChange={(e) => {
            setText(e.target.value);
            store.typing(roomId);
          }}
          onKeyDown={onKey}
        />
        <button type="submit" disabled={progress !== null}>
          Send
        </button>
      </div>
      {error && <p role="alert" className="error">{error}</p>}
    </form>
  );
}
