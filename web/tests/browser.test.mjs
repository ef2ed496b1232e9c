// The web client in a real browser (Debian's Chromium, driven by playwright-core) against the
// stack at CHAT_ENTRY_URL: people chatting in real time, a reload and a cut connection, every
// kind of message change seen by the other side, files, and hostile content shown as text.
// Run by deploy/local/test after the Rust tests, with the test stack up.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import zlib from "node:zlib";
import { chromium } from "playwright-core";

const ENTRY = process.env.CHAT_ENTRY_URL ?? "http://127.0.0.1:28080";
const CHROMIUM = process.env.CHAT_CHROMIUM ?? "/usr/bin/chromium";
const HERE = dirname(fileURLToPath(import.meta.url));
const SHOTS = process.env.CHAT_WEB_SCREENSHOTS ?? join(HERE, "..", "screenshots");
const WAIT = 20_000;

const tag = randomBytes(3).toString("hex");
let browser;
const dialogs = [];

before(async () => {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      // Calls: a synthetic camera and microphone, no permission prompt, and host candidates
      // on loopback (this machine's only network for the test).
      "--use-fake-device-for-media-stream",
      "--use-fake-ui-for-media-stream",
      "--allow-loopback-in-peer-connection",
      "--autoplay-policy=no-user-gesture-required",
    ],
  });
});

after(async () => {
  await browser?.close();
});

async function apiCall(method, path, body, bearer) {
  const response = await fetch(ENTRY + path, {
    method,
    headers: {
      ...(body ? { "Content-Type": "application/json" } : {}),
      ...(bearer ? { Authorization: `Bearer ${bearer}` } : {}),
    },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

/** A registered user (through the API) with a known password. */
async function account(name) {
  const username = `${name}_${tag}`;
  const password = `pw-${tag}-${name}-long`;
  await apiCall("POST", "/v1/auth/register", {
    email: `${username}@example.test`,
    username,
    password,
  });
  return { username, password };
}

/** A browser context and page; every dialog is recorded (and dismissed). Its sockets pass
 * through a switch (`cut`): cut, the open ones are closed and new ones refused. */
async function person() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 820 } });
  const sockets = new Set();
  const line = { down: false };
  await context.routeWebSocket(/\/v1\/ws/, (ws) => {
    if (line.down) {
      void ws.close({ code: 1001, reason: "cut" });
      return;
    }
    ws.connectToServer();
    sockets.add(ws);
    ws.onClose(() => sockets.delete(ws));
  });
  const cut = async (down) => {
    line.down = down;
    if (down) for (const ws of [...sockets]) await ws.close({ code: 1001, reason: "cut" });
  };
  const page = await context.newPage();
  page.on("dialog", (dialog) => {
    dialogs.push(dialog.message());
    void dialog.dismiss();
  });
  page.on("pageerror", (error) => console.error("page error:", error.message));
  await page.goto(ENTRY + "/");
  return { context, page, cut };
}

async function logIn(page, user) {
  await page.getByLabel("Username or e-mail").fill(user.username);
  await page.getByLabel("Password").fill(user.password);
  await page.getByRole("button", { name: "Log in" }).last().click();
  await page.getByRole("button", { name: "Log out" }).waitFor({ timeout: WAIT });
}

const timeline = (page) => page.getByRole("log", { name: "Messages" });
/** The (sent) message whose own text holds `text` (not one quoting it). */
const messageWith = (page, text) =>
  timeline(page)
    .locator("li.msg:not(.pending)")
    .filter({ has: page.locator("p.content", { hasText: text }) });

async function send(page, text) {
  await page.getByLabel("Message", { exact: true }).fill(text);
  await page.getByLabel("Message", { exact: true }).press("Enter");
  await messageWith(page, text).waitFor({ timeout: WAIT });
}

/** `page` shows `who`'s video with frames decoded and its clock running: media flows, not
 * just a connected box. */
async function videoPlays(page, who) {
  const label = `Video of ${who}`;
  await page.getByLabel(label).waitFor({ timeout: WAIT });
  await page.waitForFunction(
    (name) => {
      const v = document.querySelector(`video[aria-label="${name}"]`);
      return v && v.readyState >= 2 && v.videoWidth > 0 && !v.paused && v.currentTime > 1;
    },
    label,
    { timeout: 30_000 },
  );
}

/** The texts of the timeline's messages, in order. */
async function texts(page) {
  return timeline(page).locator("li.msg:not(.pending) p.content").allTextContents();
}

/** A 160x100 PNG (a gradient). */
function png() {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (buf) => {
    let c = 0xffffffff;
    for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const out = Buffer.alloc(12 + data.length);
    out.writeUInt32BE(data.length, 0);
    out.write(type, 4, "ascii");
    data.copy(out, 8);
    out.writeUInt32BE(crc(Buffer.concat([Buffer.from(type, "ascii"), data])), 8 + data.length);
    return out;
  };
  const width = 160;
  const height = 100;
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header[8] = 8; // bit depth
  header[9] = 2; // truecolour
  const rows = Buffer.alloc(height * (1 + width * 3));
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const at = y * (1 + width * 3) + 1 + x * 3;
      rows[at] = 40 + x;
      rows[at + 1] = 110 + ((x * y) % 60);
      rows[at + 2] = 220 - y * 2;
    }
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", header),
    chunk("IDAT", zlib.deflateSync(rows)),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}

/** One part of the story; the parts build on each other, so the first failure ends it. */
async function step(name, work) {
  const started = Date.now();
  try {
    await work();
  } catch (e) {
    console.log(`  failed: ${name}`);
    throw e;
  }
  console.log(`  ok: ${name} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
}

test("the chat in the browser", async () => {
  const bob = await account("bob");
  const carol = await account("carol");
  const alice = { username: `alice_${tag}`, password: `pw-${tag}-alice-long` };
  const a = await person();
  const b = await person();
  const c = await person();
  const room = `plans-${tag}`;
  let roomUrl = "";
  const secret = `rendezvous${tag}`;

  await step("two people chat in a private room in real time; a third cannot find it", async () => {
    // Alice registers through the page.
    await a.page.getByRole("tab", { name: "Register" }).click();
    await a.page.getByLabel("E-mail").fill(`${alice.username}@example.test`);
    await a.page.getByLabel("Username").fill(alice.username);
    await a.page.getByLabel("Password").fill(alice.password);
    await a.page.getByRole("button", { name: "Create account" }).click();
    await a.page.getByRole("navigation", { name: "Rooms" }).waitFor({ timeout: WAIT });
    await logIn(b.page, bob);
    await logIn(c.page, carol);

    // A public room too, so the list has two.
    await a.page.getByText("New room").click();
    await a.page.getByLabel("Name", { exact: true }).fill(`general-${tag}`);
    await a.page.getByLabel("Topic").fill("anything goes");
    await a.page.getByRole("button", { name: "Create room" }).click();
    await a.page.getByRole("heading", { name: `general-${tag}` }).waitFor({ timeout: WAIT });
    await send(a.page, "Welcome, everyone");

    await a.page.getByText("New room").click();
    await a.page.getByLabel("Name", { exact: true }).fill(room);
    await a.page.getByLabel("Topic").fill("only for us");
    await a.page.getByLabel("Visibility").selectOption("private");
    await a.page.getByRole("button", { name: "Create room" }).click();
    await a.page.getByRole("heading", { name: room }).waitFor({ timeout: WAIT });
    roomUrl = a.page.url();
    await a.page.getByRole("button", { name: "Members" }).click();
    await a.page.getByLabel("Invite by username").fill(bob.username);
    await a.page.getByRole("button", { name: "Invite", exact: true }).click();
    // The form empties once the invite is written.
    await a.page.waitForFunction(
      () => document.querySelector("form[aria-label='Invite'] input")?.value === "",
      null,
      { timeout: WAIT },
    );
    await a.page.getByRole("button", { name: "Members" }).click();

    // Bob finds the invitation and joins.
    const invitation = b.page.getByRole("region", { name: "Invitations" }).getByText(room);
    await invitation.waitFor({ timeout: 40_000 });
    await b.page
      .getByRole("region", { name: "Invitations" })
      .getByRole("button", { name: `Join ${room}` })
      .click();
    await b.page.getByRole("heading", { name: room }).waitFor({ timeout: WAIT });

    await send(a.page, `Meet at the ${secret} at noon?`);
    await messageWith(b.page, secret).waitFor({ timeout: WAIT });
    await send(b.page, "Noon works for me");
    await messageWith(a.page, "Noon works for me").waitFor({ timeout: WAIT });

    // Carol: not in her list, not in her search, not at its address.
    const side = c.page.getByRole("navigation", { name: "Rooms" });
    await side.getByText(`general-${tag}`).waitFor({ timeout: 40_000 }).catch(async () => {
      await c.page.reload();
      await side.getByText(`general-${tag}`).waitFor({ timeout: WAIT });
    });
    assert.equal(await side.getByText(room).count(), 0, "the private room is not listed");
    await c.page.getByLabel("Search messages").fill(secret);
    await c.page.getByLabel("Search messages").press("Enter");
    await c.page.getByText("No messages found.").waitFor({ timeout: WAIT });
    await c.page.goto(roomUrl);
    await c.page.getByText("This room does not exist, or you cannot see it.").waitFor({ timeout: WAIT });
    assert.equal(await c.page.getByText(secret).count(), 0);

    // Bob's search finds it and jumps to the message.
    await b.page.getByLabel("Search messages").fill(secret);
    await b.page.getByLabel("Search messages").press("Enter");
    const hit = b.page.getByRole("region", { name: "Search results" }).getByText(secret);
    await hit.waitFor({ timeout: WAIT });
    await hit.click();
    await b.page.locator("li.msg.focus").filter({ hasText: secret }).waitFor({ timeout: WAIT });
  });

  await step("a reload keeps the history; a cut connection loses and repeats nothing", async () => {
    await b.page.goto(roomUrl);
    await b.page.reload();
    await messageWith(b.page, secret).waitFor({ timeout: WAIT });
    await messageWith(b.page, "Noon works for me").waitFor({ timeout: WAIT });

    // The line goes down: the socket is cut (the page notices), new ones are refused and
    // HTTP fails too (the long polls it falls back to).
    await b.cut(true);
    await b.context.setOffline(true);
    await b.page.getByRole("status").filter({ hasNotText: "connected" }).waitFor({ timeout: WAIT });
    const burst = Array.from({ length: 6 }, (_, i) => `while away ${i} ${tag}`);
    for (const text of burst) await send(a.page, text);
    await new Promise((r) => setTimeout(r, 3_000));
    await b.cut(false);
    await b.context.setOffline(false);
    await b.page.getByRole("status").getByText("connected", { exact: true }).waitFor({ timeout: 40_000 });
    await messageWith(b.page, burst[burst.length - 1]).waitFor({ timeout: 40_000 });
    await send(a.page, `after the cut ${tag}`);
    await messageWith(b.page, `after the cut ${tag}`).waitFor({ timeout: WAIT });
    const seen = await texts(b.page);
    const expected = [...burst, `after the cut ${tag}`];
    const got = seen.filter((text) => expected.includes(text));
    assert.deepEqual(got, expected, "every message once, in order");
    const seqs = await timeline(b.page).locator("li.msg[data-seq]").evaluateAll((els) =>
      els.map((el) => Number(el.getAttribute("data-seq"))),
    );
    assert.deepEqual(seqs, [...seqs].sort((x, y) => x - y), "ordered by seq");
    assert.equal(new Set(seqs).size, seqs.length, "no seq twice");
  });

  await step("edits, deletions, reactions, replies, typing and presence reach the other side", async () => {
    await send(a.page, `typo here ${tag}`);
    const typo = messageWith(a.page, `typo here ${tag}`);
    await typo.getByRole("button", { name: "Edit" }).click();
    await a.page.getByLabel("Edited message").fill(`fixed here ${tag}`);
    await a.page.getByRole("button", { name: "Save" }).click();
    const fixed = messageWith(b.page, `fixed here ${tag}`);
    await fixed.getByText("(edited)").waitFor({ timeout: WAIT });

    await send(a.page, `regrettable ${tag}`);
    await messageWith(b.page, `regrettable ${tag}`).waitFor({ timeout: WAIT });
    await messageWith(a.page, `regrettable ${tag}`).getByRole("button", { name: "Delete" }).click();
    await b.page
      .locator(`li.msg`)
      .filter({ hasText: "This message was deleted." })
      .waitFor({ timeout: WAIT });
    assert.equal(await b.page.getByText(`regrettable ${tag}`).count(), 0);

    await messageWith(b.page, secret).getByRole("button", { name: "React 👍" }).click();
    await messageWith(a.page, secret).getByRole("button", { name: "👍 1" }).waitFor({ timeout: WAIT });

    await messageWith(b.page, secret).getByRole("button", { name: "Reply" }).click();
    await send(b.page, `Replying to the plan ${tag}`);
    const reply = messageWith(a.page, `Replying to the plan ${tag}`);
    await reply.locator("blockquote").filter({ hasText: secret }).waitFor({ timeout: WAIT });

    await a.page.getByLabel("Message", { exact: true }).pressSequentially("I am typing", { delay: 300 });
    await b.page.getByText(`${alice.username} is typing…`).waitFor({ timeout: WAIT });
    await a.page.getByLabel("Message", { exact: true }).fill("");

    await b.page.getByRole("button", { name: "Members" }).click();
    const members = b.page.getByRole("complementary", { name: "Members" });
    const aliceRow = members.locator("li").filter({ hasText: alice.username });
    await aliceRow.getByRole("img", { name: "online" }).waitFor({ timeout: WAIT });
    // Alice's only page closes: she goes offline for Bob; back, online again.
    const aliceUrl = a.page.url();
    await a.page.close();
    await aliceRow.getByRole("img", { name: "offline" }).waitFor({ timeout: 40_000 });
    a.page = await a.context.newPage();
    a.page.on("dialog", (dialog) => {
      dialogs.push(dialog.message());
      void dialog.dismiss();
    });
    await a.page.goto(aliceUrl);
    await aliceRow.getByRole("img", { name: "online" }).waitFor({ timeout: 40_000 });
    await b.page.getByRole("button", { name: "Members" }).click();
  });

  await step("an image: uploaded, previewed, downloaded byte for byte", async () => {
    const bytes = png();
    await messageWith(a.page, secret).waitFor({ timeout: WAIT });
    await a.page.getByLabel("Attach file").setInputFiles({
      name: `map-${tag}.png`,
      mimeType: "image/png",
      buffer: bytes,
    });
    await a.page.getByRole("list", { name: "Attached files" }).getByText(`map-${tag}.png`).waitFor({ timeout: WAIT });
    await send(a.page, `The map ${tag}`);
    const shown = messageWith(b.page, `The map ${tag}`).getByRole("img", { name: `map-${tag}.png` });
    await shown.waitFor({ timeout: WAIT });
    await b.page.waitForFunction(
      (name) => [...document.querySelectorAll("img")].some((i) => i.alt === name && i.naturalWidth === 160),
      `map-${tag}.png`,
      { timeout: WAIT },
    );
    const [download] = await Promise.all([
      b.page.waitForEvent("download", { timeout: WAIT }),
      messageWith(b.page, `The map ${tag}`).getByRole("button", { name: `Download map-${tag}.png` }).click(),
    ]);
    const path = await download.path();
    assert.deepEqual(readFileSync(path), bytes, "the same bytes");
  });

  await step("a phone whose network refuses sockets: the room menu, and long polling", async () => {
    const phone = await browser.newContext({ viewport: { width: 390, height: 780 }, hasTouch: true });
    // Every WebSocket this context opens is closed at once, as a proxy that drops them would.
    await phone.routeWebSocket(/\/v1\/ws/, (ws) => ws.close());
    const page = await phone.newPage();
    page.on("dialog", (dialog) => {
      dialogs.push(dialog.message());
      void dialog.dismiss();
    });
    await page.goto(ENTRY + "/");
    await logIn(page, bob);
    await page.getByRole("button", { name: "Rooms menu" }).click();
    await page.getByRole("navigation", { name: "Rooms" }).getByText(room).click();
    await messageWith(page, secret).waitFor({ timeout: WAIT });
    await page.getByRole("status").getByText("reconnecting (polling)").waitFor({ timeout: 40_000 });
    await send(a.page, `by long poll ${tag}`);
    await messageWith(page, `by long poll ${tag}`).waitFor({ timeout: 40_000 });
    await phone.close();
  });

  await step("the main screen, for the README", async () => {
    mkdirSync(SHOTS, { recursive: true });
    await messageWith(b.page, `The map ${tag}`).getByRole("button", { name: "React 🎉" }).click();
    await messageWith(a.page, `The map ${tag}`).getByRole("button", { name: "🎉 1" }).waitFor({ timeout: WAIT });
    await a.page.setViewportSize({ width: 1280, height: 1000 });
    await messageWith(a.page, `The map ${tag}`).scrollIntoViewIfNeeded();
    await a.page.screenshot({ path: join(SHOTS, "main.png") });
  });

  await step("a moderator's ban ends a member's access at once", async () => {
    // Carol joins the public room from its page; Alice (its owner) bans her from the members.
    await c.page.goto(ENTRY + "/");
    await c.page.getByRole("navigation", { name: "Rooms" }).getByText(`general-${tag}`).click();
    await c.page.getByRole("button", { name: "Join this room" }).click();
    await c.page.getByLabel("Message", { exact: true }).waitFor({ timeout: WAIT });
    await send(c.page, `hello from carol ${tag}`);
    await a.page.getByRole("navigation", { name: "Rooms" }).getByText(`general-${tag}`).click();
    await messageWith(a.page, `hello from carol ${tag}`).waitFor({ timeout: WAIT });
    await a.page.getByRole("button", { name: "Members" }).click();
    await a.page.getByRole("button", { name: `Ban ${carol.username}` }).click();
    // Carol is told, and can no longer write there.
    await c.page.getByText("You were banned from a room.").waitFor({ timeout: WAIT });
    await c.page.getByLabel("Message", { exact: true }).waitFor({ state: "detached", timeout: WAIT });
    await a.page.getByRole("button", { name: "Members" }).click();
    await a.page.goto(roomUrl);
    await messageWith(a.page, `The map ${tag}`).waitFor({ timeout: WAIT });
  });

  await step("two people call each other: each sees the other's video playing", async () => {
    await b.page.goto(roomUrl);
    await messageWith(b.page, `The map ${tag}`).waitFor({ timeout: WAIT });
    await a.page.getByRole("button", { name: "Video call" }).click();
    const ring = b.page.getByRole("alertdialog", { name: "Incoming call" });
    await ring.waitFor({ timeout: WAIT });
    await ring.getByRole("button", { name: "Join" }).click();
    for (const [p, other] of [
      [a.page, bob.username],
      [b.page, alice.username],
    ]) {
      await videoPlays(p, other);
    }
    await timeline(b.page).getByText(/Video call: ongoing with/).waitFor({ timeout: WAIT });
    await a.page.screenshot({ path: join(SHOTS, "call.png") });
    await a.page.getByRole("button", { name: "Hang up" }).click();
    await b.page.getByRole("button", { name: "Hang up" }).click();
    for (const p of [a.page, b.page]) {
      await timeline(p).getByText(/Video call ended · \d+:\d\d/).waitFor({ timeout: WAIT });
      await p.getByRole("region", { name: "Call" }).waitFor({ state: "detached", timeout: WAIT });
    }
  });

  await step("three people in a group call through the SFU: each sees the other two's video", async () => {
    // Janus skips loopback: the test stack's Janus gathers on the test network only.
    execFileSync(join(HERE, "..", "..", "deploy", "local", "sfu-net"), ["up"], { stdio: "inherit" });
    // A private room of three, made through the API (the pages made rooms and invites above).
    const login = (u) => apiCall("POST", "/v1/auth/login", { login: u.username, password: u.password });
    const [ta, tb, tc] = [await login(alice), await login(bob), await login(carol)];
    const huddle = await apiCall("POST", "/v1/rooms", { name: `huddle-${tag}`, visibility: "private" }, ta.access_token);
    const roomId = huddle.room_id;
    for (const t of [tb, tc]) {
      await apiCall("POST", `/v1/rooms/${roomId}/invites`, { user_id: t.user_id }, ta.access_token);
      await apiCall("POST", `/v1/rooms/${roomId}/join`, null, t.access_token);
    }
    const pages = [a.page, b.page, c.page];
    for (const p of pages) {
      // A reload: the page reads the room list anew, with the room it was just put in.
      await p.goto(`${ENTRY}/#/r/${roomId}`);
      await p.reload();
      await p.getByRole("heading", { name: `huddle-${tag}` }).waitFor({ timeout: WAIT });
    }
    await a.page.getByRole("button", { name: "Video call" }).click();
    for (const p of [b.page, c.page]) {
      const ring = p.getByRole("alertdialog", { name: "Incoming call" });
      await ring.waitFor({ timeout: WAIT });
      await ring.getByRole("button", { name: "Join" }).click();
    }
    const names = [alice.username, bob.username, carol.username];
    for (const [i, p] of pages.entries()) {
      for (const other of names.filter((_, j) => j !== i)) {
        await videoPlays(p, other);
      }
    }
    await c.page.screenshot({ path: join(SHOTS, "group-call.png") });
    for (const p of pages) await p.getByRole("button", { name: "Hang up" }).click();
    for (const p of pages) {
      await timeline(p).getByText(/Video call ended · \d+:\d\d/).waitFor({ timeout: WAIT });
    }
  });

  await step("hostile content is shown as text and runs nothing", async () => {
    const hostile = "<img src=x onerror=alert(1)>";
    await send(a.page, hostile);
    await messageWith(b.page, hostile).waitFor({ timeout: WAIT });
    assert.equal(await messageWith(b.page, hostile).locator("p.content").textContent(), hostile);
    assert.equal(await timeline(b.page).locator("img[src='x']").count(), 0);
    await new Promise((r) => setTimeout(r, 1_000));
    assert.deepEqual(dialogs, [], "no dialog opened");
  });

  for (const p of [a, b, c]) await p.context.close();
});
