// A call on this page: the user's camera and microphone, and one RTCPeerConnection per other
// participant. A call between two (`p2p`) connects the two pages: the relay carries offers,
// answers and ICE candidates between the call's participants only; of any two participants
// the one who joined later offers, so two peers never offer to each other at once. A group
// call (`sfu`) goes through the platform's SFU: one connection sends this page's media to it,
// and one per other participant brings theirs, all negotiated through signaling's SFU routes
// (complete SDPs, no trickle). Everything runs in order, one step after another.

import { api, type Topology } from "./api";
import type { Frame } from "./live";

type Payload = { type?: string; sdp?: string; candidate?: string; sdpMid?: string | null; sdpMLineIndex?: number | null };

type Peer = {
  pc: RTCPeerConnection;
  remote: MediaStream;
  /** Candidates that came before the remote description. */
  early: RTCIceCandidateInit[];
};

export class CallSession {
  local: MediaStream | null = null;
  peers = new Map<string, Peer>();
  ended = false;
  error: string | null = null;
  /** Null until known: a call this page starts learns it from its `call_started`. */
  topology: Topology | null = null;
  private iceServers: RTCIceServer[] = [];
  private chain: Promise<void> = Promise.resolve();
  /** SFU calls: the connection sending this page's media. */
  private publisher: RTCPeerConnection | null = null;

  /** The seq of this user's own join (or of the start, for the caller). */
  private mySeq = Number.MAX_SAFE_INTEGER;

  constructor(
    readonly roomId: string,
    /** Empty until the call is started or joined (`enter`). */
    public callId: string,
    readonly media: "audio" | "video",
    private send: (frame: Frame) => boolean,
    private changed: () => void,
    /** Known for a call being joined (then a group call publishes once in it). */
    private known: Topology | null,
  ) {}

  /** In the call from `seq` on. */
  enter(callId: string, seq: number) {
    this.callId = callId;
    this.mySeq = seq;
    if (this.known) this.begin(this.known);
  }

  /** Camera and microphone, and credentials for the platform's TURN server; whatever comes
   * meanwhile waits for them. */
  open(): Promise<void> {
    return this.queue(async () => {
      this.local = await navigator.mediaDevices.getUserMedia({
        audio: true,
        video: this.media === "video",
      });
      try {
        const turn = await api.turn();
        this.iceServers = [{ urls: turn.urls, username: turn.username, credential: turn.credential }];
      } catch {
        this.iceServers = []; // direct connections only
      }
      this.changed();
    });
  }

  /** The call's topology is known (its start was read): a group call publishes at once. */
  begin(topology: Topology) {
    this.known = topology;
    if (this.topology === topology || !this.callId) return;
    this.topology = topology;
    if (topology !== "sfu") return;
    this.queue(async () => {
      if (this.publisher || !this.callId) return;
      const pc = new RTCPeerConnection({ iceServers: this.iceServers });
      this.publisher = pc;
      this.sendLocal(pc);
      pc.onconnectionstatechange = () => this.changed();
      await pc.setLocalDescription(await pc.createOffer());
      await gathered(pc);
      const answer = await api.sfuPublish(this.callId, pc.localDescription!.sdp);
      await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
      for (const feed of answer.publishers) await this.subscribe(feed);
    });
  }

  /** SFU calls: another participant publishes (anew, after a reload, if we had them). */
  published(user: string) {
    if (this.topology !== "sfu") return;
    this.queue(async () => {
      const state = this.peers.get(user)?.pc.connectionState;
      if (state && !["failed", "closed", "disconnected"].includes(state)) return;
      await this.subscribe(user);
    });
  }

  private async subscribe(feed: string) {
    const offer = await api.sfuSubscribe(this.callId, feed);
    const { pc } = this.connection(feed);
    await pc.setRemoteDescription({ type: "offer", sdp: offer.sdp });
    await pc.setLocalDescription(await pc.createAnswer());
    await gathered(pc);
    await api.sfuStart(this.callId, feed, pc.localDescription!.sdp);
    this.changed();
  }

  /** Another participant is in the call, having joined at `seq`: the later one offers. */
  met(user: string, seq: number) {
    this.queue(async () => {
      // Peers meet only in a call between two (a group call's media goes to the SFU).
      if ((this.known ?? this.topology) !== "p2p" || this.peers.has(user) || seq > this.mySeq) return;
      const peer = this.peer(user);
      const offer = await peer.pc.createOffer();
      await peer.pc.setLocalDescription(offer);
      this.signal(user, { type: offer.type, sdp: offer.sdp });
    });
  }

  /** A relayed signal from `from`. */
  receive(from: string, payload: Payload) {
    this.queue(async () => {
      if ((this.known ?? this.topology) === "sfu") return;
      if (payload.type === "offer") {
        const peer = this.peers.get(from) ?? this.peer(from);
        await peer.pc.setRemoteDescription({ type: "offer", sdp: payload.sdp });
        await this.flush(peer);
        const answer = await peer.pc.createAnswer();
        await peer.pc.setLocalDescription(answer);
        this.signal(from, { type: answer.type, sdp: answer.sdp });
      } else if (payload.type === "answer") {
        const peer = this.peers.get(from);
        if (!peer) return;
        await peer.pc.setRemoteDescription({ type: "answer", sdp: payload.sdp });
        await this.flush(peer);
      } else if (typeof payload.candidate === "string") {
        const peer = this.peers.get(from) ?? this.peer(from);
        const candidate: RTCIceCandidateInit = {
          candidate: payload.candidate,
          sdpMid: payload.sdpMid ?? undefined,
          sdpMLineIndex: payload.sdpMLineIndex ?? undefined,
        };
        if (peer.pc.remoteDescription) await peer.pc.addIceCandidate(candidate);
        else peer.early.push(candidate);
      }
    });
  }

  /** A participant left the call. */
  left(user: string) {
    const peer = this.peers.get(user);
    if (!peer) return;
    peer.pc.close();
    this.peers.delete(user);
    this.changed();
  }

  close() {
    this.ended = true;
    this.publisher?.close();
    for (const peer of this.peers.values()) peer.pc.close();
    this.peers.clear();
    for (const track of this.local?.getTracks() ?? []) track.stop();
    this.changed();
  }

  /** A connection bringing `user`'s media (replacing one before it), shown as theirs. */
  private connection(user: string): Peer {
    this.peers.get(user)?.pc.close();
    const pc = new RTCPeerConnection({ iceServers: this.iceServers });
    const peer: Peer = { pc, remote: new MediaStream(), early: [] };
    pc.ontrack = (e) => {
      peer.remote.addTrack(e.track);
      this.changed();
    };
    pc.onconnectionstatechange = () => this.changed();
    this.peers.set(user, peer);
    this.changed();
    return peer;
  }

  private sendLocal(pc: RTCPeerConnection) {
    for (const track of this.local?.getTracks() ?? []) pc.addTrack(track, this.local!);
  }

  /** A call between two: the connection to `user`, sending this page's media too, its
   * candidates trickled through the relay. */
  private peer(user: string): Peer {
    const peer = this.connection(user);
    this.sendLocal(peer.pc);
    peer.pc.onicecandidate = (e) => {
      if (!e.candidate) return;
      const c = e.candidate.toJSON();
      this.signal(user, { candidate: c.candidate, sdpMid: c.sdpMid, sdpMLineIndex: c.sdpMLineIndex });
    };
    return peer;
  }

  private async flush(peer: Peer) {
    for (const candidate of peer.early.splice(0)) await peer.pc.addIceCandidate(candidate);
  }

  private signal(to: string, payload: Payload) {
    this.send({ type: "call.signal", call_id: this.callId, to, payload });
  }

  private queue(work: () => Promise<void>): Promise<void> {
    this.chain = this.chain.then(async () => {
      if (this.ended) return;
      try {
        await work();
      } catch (e) {
        this.error = e instanceof Error ? e.message : String(e);
        this.changed();
      }
    });
    return this.chain;
  }
}

/** Waits until `pc` has its candidates (SFU connections send complete SDPs), at most 3 s: on
 * this machine's networks host candidates come in milliseconds, TURN's a moment later. */
function gathered(pc: RTCPeerConnection): Promise<void> {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState !== "complete") return;
      pc.removeEventListener("icegatheringstatechange", done);
      resolve();
    };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, 3_000);
  });
}
