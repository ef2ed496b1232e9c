// The live channel: one WebSocket (`/v1/ws`, token in the first frame, never in the URL) that
// resumes every room after the last seq the page holds, and long polling (`/v1/poll`) while
// the socket cannot connect. Both deliver the same frames; the store drops what it already has.

import { ApiError, token } from "./api";

export type Frame = { type: string; [key: string]: unknown };
export type Status = "connecting" | "live" | "polling";

type Handlers = {
  frame: (frame: Frame) => void;
  status: (status: Status) => void;
  /** A room's position: the highest seq the page holds (events after it are wanted). */
  since: (roomId: string) => number | null;
};

/** Socket attempts that fail in a row before the rooms are also long-polled. */
const POLL_AFTER_FAILURES = 2;

export class Live {
  private socket: WebSocket | null = null;
  private rooms = new Set<string>();
  private failures = 0;
  private stopped = false;
  private timer: number | undefined;
  private ping: number | undefined;
  private polls = new Map<string, AbortController>();

  constructor(private handlers: Handlers) {}

  start() {
    this.stopped = false;
    void this.connect();
  }

  stop() {
    this.stopped = true;
    window.clearTimeout(this.timer);
    window.clearInterval(this.ping);
    this.socket?.close(1000, "bye");
    this.socket = null;
    for (const poll of this.polls.values()) poll.abort();
    this.polls.clear();
  }

  /** Cuts the socket now and reconnects (for a page that comes back online). */
  reconnect() {
    if (this.stopped) return;
    this.failures = 0;
    if (this.socket && this.socket.readyState <= WebSocket.OPEN) return;
    window.clearTimeout(this.timer);
    void this.connect();
  }

  subscribe(roomId: string) {
    this.rooms.add(roomId);
    if (this.socket?.readyState === WebSocket.OPEN) this.sendSubscribe(roomId);
    if (this.polls.size > 0 || this.failures >= POLL_AFTER_FAILURES) this.startPoll(roomId);
  }

  unsubscribe(roomId: string) {
    this.rooms.delete(roomId);
    this.polls.get(roomId)?.abort();
    this.polls.delete(roomId);
    this.send({ type: "unsubscribe", room_id: roomId });
  }

  /** Subscribes again from the page's position (after a resync was paged over HTTP). */
  resubscribe(roomId: string) {
    if (!this.rooms.has(roomId)) return;
    if (this.socket?.readyState === WebSocket.OPEN) this.sendSubscribe(roomId);
  }

  send(frame: Frame): boolean {
    if (this.socket?.readyState !== WebSocket.OPEN) return false;
    this.socket.send(JSON.stringify(frame));
    return true;
  }

  private sendSubscribe(roomId: string) {
    const since = this.handlers.since(roomId);
    this.send({
      type: "subscribe",
      room_id: roomId,
      ...(since === null ? {} : { since_seq: since }),
    });
  }

  private async connect() {
    if (this.stopped) return;
    this.handlers.status(this.polls.size > 0 ? "polling" : "connecting");
    let bearer: string;
    try {
      bearer = await token();
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) return; // signed out
      this.retryLater();
      return;
    }
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/v1/ws`);
    this.socket = socket;
    let opened = false;
    socket.onopen = () => {
      opened = true;
      socket.send(JSON.stringify({ type: "auth", access_token: bearer }));
      for (const room of this.rooms) this.sendSubscribe(room);
      this.failures = 0;
      this.stopPolls();
      this.handlers.status("live");
      window.clearInterval(this.ping);
      this.ping = window.setInterval(() => this.send({ type: "ping" }), 20_000);
    };
    socket.onmessage = (message) => {
      let frame: Frame;
      try {
        frame = JSON.parse(String(message.data));
      } catch {
        return;
      }
      if (frame.type !== "pong") this.handlers.frame(frame);
    };
    socket.onclose = () => {
      if (this.socket !== socket) return;
      this.socket = null;
      window.clearInterval(this.ping);
      if (this.stopped) return;
      if (!opened) this.failures += 1;
      if (this.failures >= POLL_AFTER_FAILURES) {
        for (const room of this.rooms) this.startPoll(room);
      }
      this.retryLater();
    };
  }

  private retryLater() {
    if (this.stopped) return;
    this.handlers.status(this.polls.size > 0 ? "polling" : "connecting");
    const delay = Math.min(30_000, 500 * 2 ** Math.min(this.failures, 6)) * (0.75 + Math.random() / 2);
    window.clearTimeout(this.timer);
    this.timer = window.setTimeout(() => void this.connect(), delay);
  }

  private stopPolls() {
    for (const poll of this.polls.values()) poll.abort();
    this.polls.clear();
  }

  /** Long-polls one room until the socket is back or the room is dropped. */
  private startPoll(roomId: string) {
    if (this.polls.has(roomId) || this.stopped) return;
    const abort = new AbortController();
    this.polls.set(roomId, abort);
    this.handlers.status("polling");
    void (async () => {
      let pause = 0;
      while (!abort.signal.aborted) {
        if (pause) await new Promise((r) => window.setTimeout(r, pause));
        if (abort.signal.aborted) return;
        const since = this.handlers.since(roomId) ?? 0;
        try {
          const bearer = await token();
          const response = await fetch(
            `/v1/poll?room_id=${encodeURIComponent(roomId)}&since_seq=${since}&wait_ms=25000`,
            { headers: { Authorization: `Bearer ${bearer}` }, signal: abort.signal },
          );
          if (!response.ok) {
            pause = Math.min(30_000, (pause || 500) * 2);
            continue;
          }
          const body = (await response.json()) as { events: Frame[]; resync?: string };
          for (const event of body.events) this.handlers.frame(event);
          if (body.resync) this.handlers.frame({ type: "resync", room_id: roomId, reason: body.resync });
          pause = 0;
        } catch {
          if (abort.signal.aborted) return;
          pause = Math.min(30_000, (pause || 500) * 2);
        }
      }
    })();
  }
}
