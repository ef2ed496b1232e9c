// The HTTP side of the platform (API.md), with the session's tokens.
//
// Where the tokens live: the access token only in this page's memory; the refresh token in
// localStorage, which only this origin's scripts can read (the entry's Content-Security-Policy
// admits no script but the app's own). Refreshing rotates the refresh token and reusing a spent
// one revokes the session, so tabs take turns (a Web Lock) and read the newest one inside it.

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export type Tokens = {
  access_token: string;
  refresh_token: string;
  expires_in: number;
  user_id: string;
};

export type Me = { user_id: string; username: string; email: string };

export type Room = {
  room_id: string;
  name: string;
  visibility: "public" | "private";
  topic?: string | null;
  member_count: number;
  last_seq: number;
  /** The caller's role, when they are a member (GET /v1/rooms/{id}). */
  my_role?: string | null;
};

export type Reaction = { emoji: string; user_ids: string[] };
export type Attachment = {
  file_id: string;
  filename: string;
  size: number;
  mime_type: string;
  url: string;
};

export type Message = {
  message_id: string;
  room_id: string;
  seq: number;
  user_id: string;
  content: string;
  message_type?: string;
  timestamp: number;
  edited_at?: number | null;
  deleted: boolean;
  reply_to?: string | null;
  reactions: Reaction[];
  attachments: Attachment[];
  call?: CallSummary;
};

/** The `call` part of a call's history entry (API.md). */
export type CallSummary = {
  media: "audio" | "video";
  /** Absent on entries written before group calls (they were peer to peer). */
  topology?: Topology;
  status: "ringing" | "ongoing" | "ended";
  participants: string[];
  took_part: string[];
  duration_ms: number;
  reason?: string | null;
  ended_at?: number | null;
};

/** How a call's media flows: between two pages, or through the platform's SFU (rooms of 3+). */
export type Topology = "p2p" | "sfu";

export type IceServer = { urls: string[]; username: string; credential: string; ttl: number };
export type CallOutcome = { call_id: string; seq: number | null };

export type Member = { user_id: string; username: string; role: string; online: boolean };
export type Unread = { room_id: string; unread: number; last_seq: number; read_seq: number };
export type Page = { messages: Message[]; next_before?: number; next_after?: number };

const REFRESH_KEY = "chat.refresh";
const USER_KEY = "chat.user";

let accessToken: string | null = null;
let accessExpires = 0;
let refreshing: Promise<string> | null = null;
let refreshTimer: number | undefined;
const signedOutListeners = new Set<() => void>();

/** Called when the session ends (logout, revocation, a refresh refused). */
export function onSignedOut(listener: () => void): () => void {
  signedOutListeners.add(listener);
  return () => signedOutListeners.delete(listener);
}

export function storedUser(): string | null {
  return localStorage.getItem(REFRESH_KEY) ? localStorage.getItem(USER_KEY) : null;
}

function adopt(tokens: Tokens) {
  accessToken = tokens.access_token;
  accessExpires = Date.now() + tokens.expires_in * 1000;
  localStorage.setItem(REFRESH_KEY, tokens.refresh_token);
  localStorage.setItem(USER_KEY, tokens.user_id);
  // Refreshed a minute before it expires (or at 80% of a short lifetime).
  window.clearTimeout(refreshTimer);
  const lead = Math.min(60_000, tokens.expires_in * 200);
  refreshTimer = window.setTimeout(() => {
    void refresh().catch(() => undefined);
  }, Math.max(1_000, tokens.expires_in * 1000 - lead));
}

function forget() {
  accessToken = null;
  accessExpires = 0;
  window.clearTimeout(refreshTimer);
  localStorage.removeItem(REFRESH_KEY);
  localStorage.removeItem(USER_KEY);
}

function signedOut() {
  forget();
  for (const listener of signedOutListeners) listener();
}

async function errorOf(response: Response): Promise<ApiError> {
  let code = "http_" + response.status;
  let message = response.statusText || "request failed";
  try {
    const body = await response.json();
    if (body?.error?.code) {
      code = body.error.code;
      message = body.error.message ?? message;
    }
  } catch {
    // Not the API's error shape (a proxy's page): the status says enough.
  }
  if (response.status === 429) {
    const after = response.headers.get("Retry-After");
    if (after) message += ` (try again in ${after} s)`;
  }
  return new ApiError(response.status, code, message);
}

async function rawFetch(path: string, init: RequestInit): Promise<Response> {
  try {
    return await fetch(path, init);
  } catch {
    throw new ApiError(0, "network", "cannot reach the server; check the connection");
  }
}

async function withLock<T>(work: () => Promise<T>): Promise<T> {
  if (navigator.locks?.request) {
    return navigator.locks.request("chat.refresh", work) as Promise<T>;
  }
  return work();
}

/** A fresh access token from the stored refresh token; one refresh at a time. */
export function refresh(): Promise<string> {
  if (!refreshing) {
    refreshing = withLock(async () => {
      const stored = localStorage.getItem(REFRESH_KEY);
      if (!stored) throw new ApiError(401, "signed_out", "signed out");
      const response = await rawFetch("/v1/auth/refresh", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ refresh_token: stored }),
      });
      if (!response.ok) {
        const error = await errorOf(response);
        if (response.status === 401 || response.status === 403) signedOut();
        throw error;
      }
      const tokens = (await response.json()) as Tokens;
      adopt(tokens);
      return tokens.access_token;
    }).finally(() => {
      refreshing = null;
    });
  }
  return refreshing;
}

/** The access token, refreshed first when it is about to expire. */
export async function token(): Promise<string> {
  if (accessToken && Date.now() < accessExpires - 5_000) return accessToken;
  return refresh();
}

type Options = { body?: unknown; anonymous?: boolean; signal?: AbortSignal };

/** A request with the session's token (unless `anonymous`); an API error is thrown. */
async function authorized(path: string, method: string, options: Options = {}): Promise<Response> {
  const send = async (bearer: string | null) => {
    const headers: Record<string, string> = {};
    if (bearer) headers.Authorization = `Bearer ${bearer}`;
    if (options.body !== undefined) headers["Content-Type"] = "application/json";
    return rawFetch(path, {
      method,
      headers,
      body: options.body === undefined ? undefined : JSON.stringify(options.body),
      signal: options.signal,
    });
  };
  let response = await send(options.anonymous ? null : await token());
  if (response.status === 401 && !options.anonymous) {
    // Expired or rotated meanwhile: once more with a fresh token.
    response = await send(await refresh());
  }
  if (!response.ok) throw await errorOf(response);
  return response;
}

export async function call<T>(method: string, path: string, options: Options = {}): Promise<T> {
  const response = await authorized(path, method, options);
  if (response.status === 204) return undefined as T;
  const text = await response.text();
  return (text ? JSON.parse(text) : undefined) as T;
}

export async function login(loginName: string, password: string): Promise<Tokens> {
  const tokens = await call<Tokens>("POST", "/v1/auth/login", {
    body: { login: loginName, password },
    anonymous: true,
  });
  adopt(tokens);
  return tokens;
}

export async function register(email: string, username: string, password: string) {
  await call("POST", "/v1/auth/register", {
    body: { email, username, password },
    anonymous: true,
  });
  return login(username, password);
}

export async function logout() {
  try {
    await call("POST", "/v1/auth/logout");
  } finally {
    signedOut();
  }
}

/** Bytes of a file the caller may read (they need the bearer token, so no plain `src` URL). */
export async function fileBlob(fileId: string): Promise<Blob> {
  return (await authorized(`/v1/files/${encodeURIComponent(fileId)}`, "GET")).blob();
}

/** Uploads one file with progress (0..1); XMLHttpRequest, as fetch reports no upload progress. */
export async function upload(file: File, progress: (done: number) => void): Promise<Attachment> {
  const bearer = await token();
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("POST", "/v1/files");
    request.setRequestHeader("Authorization", `Bearer ${bearer}`);
    request.upload.onprogress = (e) => {
      if (e.lengthComputable) progress(e.loaded / e.total);
    };
    request.onerror = () => reject(new ApiError(0, "network", "the upload was cut off"));
    request.onload = () => {
      let body: { error?: { code: string; message: string } } & Partial<Attachment> = {};
      try {
        body = JSON.parse(request.responseText);
      } catch {
        // handled below
      }
      if (request.status === 201 && body.file_id) {
        progress(1);
        resolve(body as Attachment);
      } else {
        reject(
          new ApiError(
            request.status,
            body.error?.code ?? "http_" + request.status,
            body.error?.message ?? "the upload was refused",
          ),
        );
      }
    };
    const form = new FormData();
    form.append("file", file);
    request.send(form);
  });
}

export const newId = () => crypto.randomUUID();

export const api = {
  me: () => call<Me>("GET", "/v1/users/me"),
  rooms: (scope: "joined" | "public" | "invited") => call<Room[]>("GET", `/v1/rooms?scope=${scope}`),
  room: (id: string) => call<Room>("GET", `/v1/rooms/${encodeURIComponent(id)}`),
  createRoom: (name: string, visibility: "public" | "private", topic?: string) =>
    call<{ room_id: string }>("POST", "/v1/rooms", {
      body: { name, visibility, ...(topic ? { topic } : {}) },
    }),
  join: (id: string) => call("POST", `/v1/rooms/${encodeURIComponent(id)}/join`),
  leave: (id: string) => call("POST", `/v1/rooms/${encodeURIComponent(id)}/leave`),
  invite: (id: string, username: string) =>
    call("POST", `/v1/rooms/${encodeURIComponent(id)}/invites`, { body: { username } }),
  ban: (id: string, userId: string) =>
    call("POST", `/v1/rooms/${encodeURIComponent(id)}/bans`, { body: { user_id: userId } }),
  setRole: (id: string, userId: string, role: string) =>
    call("PUT", `/v1/rooms/${encodeURIComponent(id)}/members/${encodeURIComponent(userId)}/role`, {
      body: { role },
    }),
  members: (id: string) => call<Member[]>("GET", `/v1/rooms/${encodeURIComponent(id)}/members`),
  unread: () => call<Unread[]>("GET", "/v1/me/unread"),
  before: (id: string, seq: number | null, limit = 50) =>
    call<Page>(
      "GET",
      `/v1/rooms/${encodeURIComponent(id)}/messages?limit=${limit}` +
        (seq === null ? "" : `&before=${seq}`),
    ),
  after: (id: string, seq: number, limit = 200) =>
    call<Page>("GET", `/v1/rooms/${encodeURIComponent(id)}/messages?after=${seq}&limit=${limit}`),
  post: (id: string, clientMsgId: string, content: string, replyTo?: string, files?: string[]) =>
    call<{ message_id: string; seq: number }>(
      "POST",
      `/v1/rooms/${encodeURIComponent(id)}/messages`,
      {
        body: {
          client_msg_id: clientMsgId,
          content,
          ...(replyTo ? { reply_to: replyTo } : {}),
          ...(files?.length ? { attachments: files } : {}),
        },
      },
    ),
  edit: (id: string, messageId: string, content: string) =>
    call("PATCH", `/v1/rooms/${encodeURIComponent(id)}/messages/${messageId}`, {
      body: { content },
    }),
  remove: (id: string, messageId: string) =>
    call("DELETE", `/v1/rooms/${encodeURIComponent(id)}/messages/${messageId}`),
  react: (id: string, messageId: string, emoji: string, on: boolean) =>
    call(
      on ? "PUT" : "DELETE",
      `/v1/rooms/${encodeURIComponent(id)}/messages/${messageId}/reactions/${encodeURIComponent(emoji)}`,
    ),
  read: (id: string, seq: number) =>
    call("POST", `/v1/rooms/${encodeURIComponent(id)}/read`, { body: { seq } }),
  startCall: (id: string, media: "audio" | "video") =>
    call<CallOutcome>("POST", `/v1/rooms/${encodeURIComponent(id)}/calls`, { body: { media } }),
  callAction: (id: string, callId: string, action: "join" | "leave" | "end" | "decline", busy = false) =>
    call<CallOutcome>(
      "POST",
      `/v1/rooms/${encodeURIComponent(id)}/calls/${encodeURIComponent(callId)}/${action}`,
      action === "decline" ? { body: { busy } } : {},
    ),
  turn: () => call<IceServer>("POST", "/v1/calls/turn-credentials"),
  /** SFU calls: this page's media in (offer out, the SFU's answer back). */
  sfuPublish: (callId: string, sdp: string) =>
    call<{ sdp: string; publishers: string[] }>("POST", `/v1/calls/${encodeURIComponent(callId)}/sfu/publish`, {
      body: { sdp },
    }),
  /** SFU calls: the SFU's offer of `feed`'s media. */
  sfuSubscribe: (callId: string, feed: string) =>
    call<{ sdp: string }>("POST", `/v1/calls/${encodeURIComponent(callId)}/sfu/subscribe`, { body: { feed } }),
  sfuStart: (callId: string, feed: string, sdp: string) =>
    call("POST", `/v1/calls/${encodeURIComponent(callId)}/sfu/start`, { body: { feed, sdp } }),
  search: (q: string) =>
    call<{ messages: Message[]; next_before?: string }>(
      "GET",
      `/v1/search?q=${encodeURIComponent(q)}&limit=30`,
    ),
};
