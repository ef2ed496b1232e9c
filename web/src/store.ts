// What the page knows: rooms, their timelines (by seq), members, presence, typing, unread
// counts and the sends in flight. Timelines take history pages over HTTP and events from the
// live channel; an event at or below a room's position is one the page has (dropped), one past
// a gap makes the room page the gap over HTTP first, so nothing shows twice or goes missing.

import {
  api,
  ApiError,
  newId,
  type Attachment,
  type CallOutcome,
  type Topology,
  type Member,
  type Message,
  type Room,
} from "./api";
import { CallSession } from "./call";
import { Live, type Frame, type Status } from "./live";

export type Pending = {
  client_msg_id: string;
  content: string;
  reply_to?: string;
  attachments: Attachment[];
  state: "sending" | "failed";
  error?: string;
  message_id?: string;
};

export type Timeline = {
  messages: Message[];
  /** Highest seq applied (any event kind); the live channel resumes after it. */
  position: number | null;
  /** Whether older history exists before the first loaded message. */
  more: boolean;
  loading: boolean;
  /** Whether history was read (a room only subscribed for the list has live events only). */
  loaded: boolean;
  /** History is being read: live events wait (the subscription restarts after the page). */
  opening: boolean;
  pending: Pending[];
  typing: Map<string, number>;
  error?: string;
};

/** A room's call as the page knows it: who is in it, with the seq each joined at. */
/** How long a call rings (the commands tier's CHAT_CALL_RING_SECS default). */
const RING_MS = 30_000;

export type ActiveCall = {
  call_id: string;
  initiator: string;
  media: "audio" | "video";
  topology: Topology;
  participants: Map<string, number>;
  status: "ringing" | "ongoing";
};

/** A call ringing for this user. */
export type Ring = { roomId: string; callId: string; from: string; media: "audio" | "video" };

/** Signals kept for a call this page is about to enter (they may come before its join's answer). */
const EARLY_SIGNALS = 200;

export type RoomEntry = Room & {
  joined: boolean;
  unread: number;
  last?: Message;
};

type Listener = () => void;

const EVENT_KINDS_OF_MESSAGES = new Set([
  "message_posted",
  "message_edited",
  "message_deleted",
  "reaction_added",
  "reaction_removed",
]);

export class Store {
  me = "";
  status: Status = "connecting";
  rooms = new Map<string, RoomEntry>();
  publicRooms: Room[] = [];
  /** Private rooms the caller was invited to and has not joined. */
  invitations: Room[] = [];
  timelines = new Map<string, Timeline>();
  members = new Map<string, Map<string, Member>>();
  names = new Map<string, string>();
  online = new Set<string>();
  active: string | null = null;
  notice: string | null = null;
  /** Calls going on, by room. */
  calls = new Map<string, ActiveCall>();
  /** The call this page is in (one at a time). */
  session: CallSession | null = null;
  ringing: Ring | null = null;
  private early: { callId: string; from: string; payload: Record<string, unknown> }[] = [];
  version = 0;
  private listeners = new Set<Listener>();
  private live: Live;
  private readSent = new Map<string, number>();
  private refresher: number | undefined;
  private typingSent = new Map<string, number>();
  private visible = () => document.visibilityState === "visible";

  constructor() {
    this.live = new Live({
      frame: (f) => this.onFrame(f),
      status: (s) => {
        this.status = s;
        this.changed();
      },
      since: (room) => this.timelines.get(room)?.position ?? this.rooms.get(room)?.last_seq ?? null,
    });
  }

  subscribe = (listener: Listener) => {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  };

  snapshot = () => this.version;

  changed() {
    this.version += 1;
    for (const l of this.listeners) l();
  }

  fail(e: unknown) {
    this.notice = e instanceof Error ? e.message : String(e);
    this.changed();
  }

  async start(me: string) {
    this.me = me;
    this.live.start();
    window.addEventListener("online", () => this.live.reconnect());
    // New invitations and public rooms are not pushed: the lists are read again now and then.
    this.refresher = window.setInterval(() => {
      if (this.visible()) void this.loadRooms().catch(() => undefined);
    }, 15_000);
    await this.loadRooms();
  }

  stop() {
    window.clearInterval(this.refresher);
    this.session?.close();
    this.live.stop();
  }

  async loadRooms() {
    const [joined, publicRooms, invitations, unread] = await Promise.all([
      api.rooms("joined"),
      api.rooms("public"),
      api.rooms("invited").catch(() => []),
      api.unread().catch(() => []),
    ]);
    this.invitations = invitations;
    const unreadOf = new Map(unread.map((u) => [u.room_id, u.unread]));
    for (const room of joined) {
      const known = this.rooms.get(room.room_id);
      this.rooms.set(room.room_id, {
        ...room,
        joined: true,
        unread: unreadOf.get(room.room_id) ?? known?.unread ?? 0,
        last: known?.last,
      });
      this.live.subscribe(room.room_id);
    }
    this.publicRooms = publicRooms;
    this.changed();
    // The last message of each room, for the list (names come with the members).
    await Promise.all(
      joined.slice(0, 30).map(async (room) => {
        await this.loadMembers(room.room_id).catch(() => undefined);
        if (room.last_seq > 0 && !this.rooms.get(room.room_id)?.last) {
          const page = await api.before(room.room_id, null, 1).catch(() => null);
          const entry = this.rooms.get(room.room_id);
          if (entry && page?.messages[0] && !entry.last) entry.last = page.messages[0];
        }
      }),
    );
    this.changed();
  }

  async loadMembers(roomId: string) {
    const list = await api.members(roomId);
    this.members.set(roomId, new Map(list.map((m) => [m.user_id, m])));
    for (const m of list) {
      this.names.set(m.user_id, m.username);
      if (m.online) this.online.add(m.user_id);
      else this.online.delete(m.user_id);
    }
    this.changed();
  }

  name(userId: string) {
    return this.names.get(userId) ?? "someone";
  }

  role(roomId: string, userId: string) {
    return this.members.get(roomId)?.get(userId)?.role ?? null;
  }

  timeline(roomId: string): Timeline {
    let t = this.timelines.get(roomId);
    if (!t) {
      t = {
        messages: [],
        position: null,
        more: true,
        loading: false,
        loaded: false,
        opening: false,
        pending: [],
        typing: new Map(),
      };
      this.timelines.set(roomId, t);
    }
    return t;
  }

  /** Opens a room: its detail (404 for a private room the caller is not in), members, the
   * newest page (or the page around `aroundSeq`), and live events after it. */
  async open(roomId: string, aroundSeq?: number) {
    this.active = roomId;
    this.changed();
    const t = this.timeline(roomId);
    try {
      if (!this.rooms.has(roomId)) {
        const room = await api.room(roomId);
        // The room list may have come meanwhile (a page opened on a room's link): it knows.
        if (!this.rooms.has(roomId)) {
          this.rooms.set(roomId, { ...room, joined: room.my_role != null, unread: 0 });
        }
      }
      await this.loadMembers(roomId).catch(() => undefined);
      if (aroundSeq !== undefined && !t.messages.some((m) => m.seq === aroundSeq)) {
        // The page around the message, then everything after it, so the live position
        // joins up with it.
        t.messages = [];
        t.position = null;
        t.opening = true;
        const page = await api.before(roomId, aroundSeq + 20, 40);
        this.merge(t, page.messages);
        t.more = page.next_before !== undefined;
        await this.fillAfter(roomId, t);
        t.loaded = true;
      } else if (!t.loaded) {
        // Live events seen while only listed are read again with their history.
        t.messages = [];
        t.position = null;
        t.opening = true;
        const page = await api.before(roomId, null, 50);
        this.merge(t, page.messages);
        t.more = page.next_before !== undefined;
        if (t.position === null) t.position = this.rooms.get(roomId)?.last_seq ?? 0;
        t.loaded = true;
      }
      t.error = undefined;
      t.opening = false;
      // (Re)subscribing restarts the room's stream after the page's position.
      this.live.subscribe(roomId);
    } catch (e) {
      t.opening = false;
      t.error =
        e instanceof ApiError && e.status === 404
          ? "This room does not exist, or you cannot see it."
          : e instanceof Error
            ? e.message
            : String(e);
    }
    this.changed();
    this.markRead(roomId);
  }

  close(roomId: string) {
    if (this.active === roomId) this.active = null;
    if (!this.rooms.get(roomId)?.joined) this.live.unsubscribe(roomId);
  }

  async older(roomId: string) {
    const t = this.timeline(roomId);
    if (t.loading || !t.more) return;
    t.loading = true;
    this.changed();
    try {
      const first = t.messages[0]?.seq ?? null;
      const page = await api.before(roomId, first, 50);
      this.merge(t, page.messages);
      t.more = page.next_before !== undefined && page.messages.length > 0;
    } catch (e) {
      this.fail(e);
    } finally {
      t.loading = false;
      this.changed();
    }
  }

  private async fillAfter(roomId: string, t: Timeline) {
    for (let guard = 0; guard < 50; guard++) {
      const from = t.position ?? 0;
      const page = await api.after(roomId, from, 200);
      this.merge(t, page.messages);
      if (page.next_after === undefined || page.messages.length === 0) break;
    }
  }

  /** Adds read-back messages (replacing the copies it has: the read model is newer). */
  private merge(t: Timeline, messages: Message[]) {
    const bySeq = new Map(t.messages.map((m) => [m.seq, m]));
    for (const m of messages) {
      bySeq.set(m.seq, m);
      if (t.position === null || m.seq > t.position) t.position = m.seq;
      this.settle(t, m.message_id);
      if (m.call && m.call.status !== "ended" && !this.calls.has(m.room_id)) {
        this.calls.set(m.room_id, {
          call_id: m.message_id,
          initiator: m.user_id,
          media: m.call.media,
          topology: m.call.topology ?? "p2p",
          participants: new Map(m.call.participants.map((u) => [u, m.seq])),
          status: m.call.status,
        });
        // A call that started as this page read the room rings here too (its start came with
        // the history, not on the socket); past the ring time it only shows "Join call".
        const fresh = Date.now() - m.timestamp < RING_MS;
        const mine = m.call.participants.includes(this.me);
        if (m.call.status === "ringing" && fresh && !mine && !this.session && !this.ringing) {
          this.ringing = { roomId: m.room_id, callId: m.message_id, from: m.user_id, media: m.call.media };
        }
      }
    }
    t.messages = [...bySeq.values()].sort((a, b) => a.seq - b.seq);
  }

  /** The send that made `messageId` is shown as the message itself now. */
  private settle(t: Timeline, messageId: string) {
    t.pending = t.pending.filter((p) => p.message_id !== messageId);
  }

  private onFrame(f: Frame) {
    switch (f.type) {
      case "event":
        this.onEvent(f.room_id as string, f.seq as number, f.event as Record<string, unknown>);
        break;
      case "resync":
        void this.resync(f.room_id as string);
        break;
      case "typing": {
        const t = this.timeline(f.room_id as string);
        const user = f.user_id as string;
        if (user === this.me) break;
        if (f.active === false) t.typing.delete(user);
        else t.typing.set(user, Date.now() + Number(f.expires_in_ms ?? 5000));
        this.changed();
        break;
      }
      case "presence":
        if (f.status === "online") this.online.add(f.user_id as string);
        else this.online.delete(f.user_id as string);
        this.changed();
        break;
      case "call.published":
        if (this.session && this.session.callId === f.call_id) this.session.published(f.user_id as string);
        break;
      case "call.signal": {
        const callId = f.call_id as string;
        const payload = f.payload as Record<string, unknown>;
        if (this.session?.callId === callId) this.session.receive(f.from as string, payload);
        else if (this.early.length < EARLY_SIGNALS) this.early.push({ callId, from: f.from as string, payload });
        break;
      }
      case "error":
        if (f.code === "unauthorized" || f.code === "revoked") this.fail(String(f.message));
        break;
      default:
        break;
    }
  }

  private async resync(roomId: string) {
    const t = this.timeline(roomId);
    try {
      await this.fillAfter(roomId, t);
      this.changed();
      this.live.resubscribe(roomId);
    } catch (e) {
      this.fail(e);
    }
  }

  private onEvent(roomId: string, seq: number, event: Record<string, unknown>) {
    const t = this.timeline(roomId);
    if (t.opening) return; // sent again after the page is read
    if (t.position !== null && seq <= t.position) return; // had it
    if (t.loaded && t.position !== null && seq > t.position + 1) {
      // The live channel never skips; a page that lost its place pages the gap instead.
      void this.resync(roomId);
      return;
    }
    t.position = seq;
    const kind = event.kind as string;
    const room = this.rooms.get(roomId);
    if (room) room.last_seq = Math.max(room.last_seq, seq);
    if (EVENT_KINDS_OF_MESSAGES.has(kind)) this.applyMessageEvent(roomId, t, seq, kind, event);
    else if (kind.startsWith("call_")) this.applyCallEvent(roomId, t, seq, kind, event);
    else this.applyRoomEvent(roomId, kind, event);
    this.changed();
  }

  private applyMessageEvent(
    roomId: string,
    t: Timeline,
    seq: number,
    kind: string,
    e: Record<string, unknown>,
  ) {
    const envelope = e.envelope as { occurred_at?: number; actor_id?: string };
    const id = e.message_id as string;
    const target = t.messages.find((m) => m.message_id === id);
    switch (kind) {
      case "message_posted": {
        const m: Message = {
          message_id: id,
          room_id: roomId,
          seq,
          user_id: e.author_id as string,
          content: e.content as string,
          message_type: e.message_type as string,
          timestamp: envelope.occurred_at ?? Date.now(),
          deleted: false,
          reply_to: (e.reply_to as string | null) ?? null,
          reactions: [],
          attachments: (e.attachments as Attachment[]) ?? [],
        };
        t.messages.push(m);
        this.settle(t, id);
        const room = this.rooms.get(roomId);
        if (room) {
          room.last = m;
          const seen = this.active === roomId && this.visible();
          if (m.user_id !== this.me && !seen) room.unread += 1;
        }
        if (this.active === roomId) this.markRead(roomId);
        t.typing.delete(m.user_id);
        break;
      }
      case "message_edited":
        if (target) {
          target.content = e.content as string;
          target.edited_at = envelope.occurred_at ?? Date.now();
        }
        break;
      case "message_deleted":
        if (target) {
          target.deleted = true;
          target.content = "";
          target.attachments = [];
        }
        break;
      case "reaction_added":
      case "reaction_removed": {
        if (!target) break;
        const emoji = e.emoji as string;
        const member = e.member_id as string;
        const reaction = target.reactions.find((r) => r.emoji === emoji);
        if (kind === "reaction_added") {
          if (!reaction) target.reactions.push({ emoji, user_ids: [member] });
          else if (!reaction.user_ids.includes(member)) reaction.user_ids.push(member);
        } else if (reaction) {
          reaction.user_ids = reaction.user_ids.filter((u) => u !== member);
          if (reaction.user_ids.length === 0) target.reactions = target.reactions.filter((r) => r !== reaction);
        }
        target.reactions = [...target.reactions];
        break;
      }
    }
    // A new object for React's sake.
    t.messages = [...t.messages];
  }

  /** A call event: the room's call, the call's history entry, the ring, and this page's part
   * in it (peers met and left, the session ended). */
  private applyCallEvent(roomId: string, t: Timeline, seq: number, kind: string, e: Record<string, unknown>) {
    const callId = e.call_id as string;
    const member = (e.member_id ?? e.initiator_id) as string | undefined;
    const envelope = e.envelope as { occurred_at?: number };
    const entry = t.messages.find((m) => m.message_id === callId);
    const call = this.calls.get(roomId);
    const inSession = this.session?.callId === callId;
    switch (kind) {
      case "call_started": {
        const media = e.media as "audio" | "video";
        const topology = (e.topology as Topology | undefined) ?? "p2p";
        this.calls.set(roomId, {
          call_id: callId,
          initiator: member!,
          media,
          topology,
          participants: new Map([[member!, seq]]),
          status: "ringing",
        });
        if (inSession) this.session!.begin(topology);
        if (!entry) {
          t.messages.push({
            message_id: callId,
            room_id: roomId,
            seq,
            user_id: member!,
            content: "",
            message_type: "call",
            timestamp: envelope.occurred_at ?? Date.now(),
            deleted: false,
            reactions: [],
            attachments: [],
            call: { media, topology, status: "ringing", participants: [member!], took_part: [member!], duration_ms: 0 },
          });
        }
        if (member !== this.me && this.rooms.get(roomId)?.joined) {
          // In another call already: busy (the caller is told so).
          if (this.session) void api.callAction(roomId, callId, "decline", true).catch(() => undefined);
          else this.ringing = { roomId, callId, from: member!, media };
        }
        break;
      }
      case "call_joined":
        if (call?.call_id === callId && member) {
          call.participants.set(member, seq);
          call.status = "ongoing";
        }
        if (entry?.call && member) {
          if (!entry.call.participants.includes(member)) entry.call.participants.push(member);
          if (!entry.call.took_part.includes(member)) entry.call.took_part.push(member);
          entry.call.status = "ongoing";
        }
        if (member === this.me && this.ringing?.callId === callId) this.ringing = null;
        if (inSession && member && member !== this.me) this.session!.met(member, seq);
        break;
      case "call_left":
        if (call?.call_id === callId && member) call.participants.delete(member);
        if (entry?.call && member) entry.call.participants = entry.call.participants.filter((u) => u !== member);
        if (member === this.me) {
          if (this.ringing?.callId === callId) this.ringing = null;
          if (inSession) this.endSession(e.reason === "banned" ? "You were removed from the call." : null);
        } else if (inSession && member) this.session!.left(member);
        break;
      case "call_ended":
        if (call?.call_id === callId) this.calls.delete(roomId);
        if (entry?.call) {
          entry.call = {
            ...entry.call,
            status: "ended",
            participants: [],
            duration_ms: Number(e.duration_ms ?? 0),
            reason: (e.reason as string | null) ?? null,
            ended_at: envelope.occurred_at ?? Date.now(),
          };
        }
        if (this.ringing?.callId === callId) this.ringing = null;
        if (inSession) this.endSession(null);
        break;
    }
    t.messages = [...t.messages];
  }

  /** Starts a call in the room and enters it. */
  async startCall(roomId: string, media: "audio" | "video" = "video") {
    await this.enterCall(roomId, "", media, null, () => api.startCall(roomId, media));
  }

  /** Joins the room's call (from the room, or by answering its ring). */
  async joinCall(roomId: string) {
    const call = this.calls.get(roomId);
    if (!call) throw new Error("The call has ended.");
    if (this.session?.callId === call.call_id) return;
    const session = await this.enterCall(roomId, call.call_id, call.media, call.topology, () =>
      api.callAction(roomId, call.call_id, "join"),
    );
    this.ringing = null;
    for (const [user, seq] of call.participants) if (user !== this.me) session.met(user, seq);
  }

  /** Camera and microphone first, then `command` (the start or the join): if either fails,
   * no session is left behind. */
  private async enterCall(
    roomId: string,
    callId: string,
    media: "audio" | "video",
    topology: Topology | null,
    command: () => Promise<CallOutcome>,
  ): Promise<CallSession> {
    if (this.session) throw new Error("You are in a call already; hang up first.");
    const session = this.newSession(roomId, callId, media, topology);
    try {
      await session.open();
      const done = await command();
      this.adopt(session, done.call_id, done.seq);
      return session;
    } catch (e) {
      this.endSession(null);
      throw e;
    }
  }

  async declineCall() {
    const ring = this.ringing;
    this.ringing = null;
    this.changed();
    if (ring) await api.callAction(ring.roomId, ring.callId, "decline");
  }

  /** Leaves the call this page is in. */
  async hangUp() {
    const session = this.session;
    if (!session) return;
    this.endSession(null);
    if (session.callId) await api.callAction(session.roomId, session.callId, "leave");
  }

  private newSession(roomId: string, callId: string, media: "audio" | "video", topology: Topology | null) {
    const session = new CallSession(
      roomId,
      callId,
      media,
      (f) => this.live.send(f),
      () => this.changed(),
      topology,
    );
    this.session = session;
    this.changed();
    return session;
  }

  /** The session is in call `callId` from `seq` (its join; null: it was in it already). */
  private adopt(session: CallSession, callId: string, seq: number | null) {
    const call = this.calls.get(session.roomId);
    const known = call?.participants.get(this.me);
    session.enter(callId, seq ?? known ?? Number.MAX_SAFE_INTEGER);
    // Known already unless the start is still on its way (then `call_started` begins it).
    if (call?.call_id === callId) session.begin(call.topology);
    const early = this.early.filter((s) => s.callId === callId);
    this.early = this.early.filter((s) => s.callId !== callId);
    for (const s of early) session.receive(s.from, s.payload);
    this.changed();
  }

  private endSession(notice: string | null) {
    this.session?.close();
    this.session = null;
    if (notice) this.notice = notice;
    this.changed();
  }

  private applyRoomEvent(roomId: string, kind: string, e: Record<string, unknown>) {
    const member = (e.member_id ?? e.invitee_id) as string | undefined;
    if (kind === "member_joined" || kind === "member_role_changed") {
      void this.loadMembers(roomId).catch(() => undefined);
    }
    if ((kind === "member_left" || kind === "member_banned") && member) {
      this.members.get(roomId)?.delete(member);
      if (member === this.me) {
        const room = this.rooms.get(roomId);
        if (room) room.joined = false;
        if (kind === "member_banned") this.notice = "You were banned from a room.";
      }
    }
    if (kind === "room_updated") {
      const room = this.rooms.get(roomId);
      if (room) {
        room.name = e.name as string;
        room.topic = e.topic as string | null;
        room.visibility = e.visibility as "public" | "private";
      }
    }
  }

  markRead(roomId: string) {
    const t = this.timelines.get(roomId);
    const room = this.rooms.get(roomId);
    const last = t?.messages[t.messages.length - 1]?.seq;
    if (!room?.joined || last === undefined || !this.visible()) return;
    room.unread = 0;
    if ((this.readSent.get(roomId) ?? 0) >= last) return;
    this.readSent.set(roomId, last);
    void api.read(roomId, last).catch(() => this.readSent.delete(roomId));
  }

  typing(roomId: string) {
    const now = Date.now();
    if (now - (this.typingSent.get(roomId) ?? 0) < 3_000) return;
    this.typingSent.set(roomId, now);
    this.live.send({ type: "typing", room_id: roomId });
  }

  /** Sends with a `client_msg_id` and retries with the same one until the server answers:
   * a retried send is written once. */
  async send(roomId: string, content: string, replyTo?: string, attachments: Attachment[] = []) {
    const t = this.timeline(roomId);
    const pending: Pending = {
      client_msg_id: newId(),
      content,
      reply_to: replyTo,
      attachments,
      state: "sending",
    };
    t.pending = [...t.pending, pending];
    this.typingSent.delete(roomId);
    this.changed();
    await this.deliver(roomId, pending);
  }

  async retry(roomId: string, clientMsgId: string) {
    const p = this.timeline(roomId).pending.find((x) => x.client_msg_id === clientMsgId);
    if (!p) return;
    p.state = "sending";
    p.error = undefined;
    this.changed();
    await this.deliver(roomId, p);
  }

  discard(roomId: string, clientMsgId: string) {
    const t = this.timeline(roomId);
    t.pending = t.pending.filter((p) => p.client_msg_id !== clientMsgId);
    this.changed();
  }

  private async deliver(roomId: string, p: Pending) {
    const t = this.timeline(roomId);
    for (let attempt = 0; ; attempt++) {
      try {
        const answer = await api.post(
          roomId,
          p.client_msg_id,
          p.content,
          p.reply_to,
          p.attachments.map((a) => a.file_id),
        );
        p.message_id = answer.message_id;
        // The event may have come first.
        if (t.messages.some((m) => m.message_id === answer.message_id)) this.settle(t, answer.message_id);
        this.changed();
        return;
      } catch (e) {
        const transient = e instanceof ApiError && (e.status === 0 || e.status === 429 || e.status >= 500);
        if (!transient || attempt >= 6) {
          p.state = "failed";
          p.error = e instanceof Error ? e.message : String(e);
          this.changed();
          return;
        }
        await new Promise((r) => window.setTimeout(r, Math.min(8_000, 500 * 2 ** attempt)));
      }
    }
  }

  async join(roomId: string) {
    await api.join(roomId);
    await this.loadRooms();
    await this.loadMembers(roomId).catch(() => undefined);
  }

  async leave(roomId: string) {
    await api.leave(roomId);
    this.rooms.delete(roomId);
    this.timelines.delete(roomId);
    this.live.unsubscribe(roomId);
    await this.loadRooms();
  }
}
