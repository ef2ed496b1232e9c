// A call on this page: the user's camera and microphone, and one RTCPeerConnection per other
// participant (1:1 and small calls are a mesh; the relay carries offers, answers and ICE
// candidates between the call's participants only). Of any two participants the one who
// joined later offers, so two peers never offer to each other at once; everything one peer
// does runs in the order its signals came (the relay keeps the sender's order).

import { api } from "./api";
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
  private iceServers: RTCIceServer[] = [];
  private chain: Promise<void> = Promise.resolve();

  /** The seq of this user's own join (or of the start, for the caller). */
  private mySeq = Number.MAX_SAFE_INTEGER;

  constructor(
    readonly roomId: string,
    /** Empty until the call is started or joined (`enter`). */
    public callId: string,
    readonly media: "audio" | "video",
    private send: (frame: Frame) => boolean,
    private changed: () => void,
  ) {}

  /** In the call from `seq` on. */
  enter(callId: string, seq: number) {
    this.callId = callId;
    this.mySeq = seq;
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

  /** Another participant is in the call, having joined at `seq`: the later one offers. */
  met(user: string, seq: number) {
    this.queue(async () => {
      if (this.peers.has(user) || seq > this.mySeq) return;
      const peer = this.peer(user);
      const offer = await peer.pc.createOffer();
      await peer.pc.setLocalDescription(offer);
      this.signal(user, { type: offer.type, sdp: offer.sdp });
    });
  }

  /** A relayed signal from `from`. */
  receive(from: string, payload: Payload) {
    this.queue(async () => {
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
    for (const peer of this.peers.values()) peer.pc.close();
    this.peers.clear();
    for (const track of this.local?.getTracks() ?? []) track.stop();
    this.changed();
  }

  private peer(user: string): Peer {
    const pc = new RTCPeerConnection({ iceServers: this.iceServers });
    const peer: Peer = { pc, remote: new MediaStream(), early: [] };
    for (const track of this.local?.getTracks() ?? []) pc.addTrack(track, this.local!);
    pc.ontrack = (e) => {
      peer.remote.addTrack(e.track);
      this.changed();
    };
    pc.onicecandidate = (e) => {
      if (!e.candidate) return;
      const c = e.candidate.toJSON();
      this.signal(user, { candidate: c.candidate, sdpMid: c.sdpMid, sdpMLineIndex: c.sdpMLineIndex });
    };
    pc.onconnectionstatechange = () => this.changed();
    this.peers.set(user, peer);
    this.changed();
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
