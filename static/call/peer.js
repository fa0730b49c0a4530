// One RTCPeerConnection to the relay: publish and subscribe on it, perfect negotiation as the polite peer.

export class PeerSession extends EventTarget {
  /**
   * @param {{iceServers: RTCIceServer[], send: (msg: object) => void, held?: boolean}} options
   * With `held`, what the connection would send (its offer, its candidates) is kept until
   * release(): it can be set up while the server has not acknowledged the join yet.
   * Events: "track" ({mid, track}), "tracks" (the server's mid map changed), "state" (connectionState).
   */
  constructor({ iceServers, send, held = false }) {
    super();
    this.send = send;
    this.held = held;
    this.queue = []; // messages kept while held, in order
    this.iceServers = iceServers;
    this.pc = new RTCPeerConnection({ iceServers, bundlePolicy: "max-bundle" });
    this.local = { microphone: null, camera: null, screen: null }; // transceivers we publish on
    this.remoteTracks = {}; // mid -> {participant_id, kind, source}, from the server's offers
    this.makingOffer = false;
    this.detached = false;
    this.pc.addEventListener("negotiationneeded", () => this.#negotiate());
    this.pc.addEventListener("icecandidate", (event) => {
      this.#send({ type: "ice-candidate", candidate: event.candidate ? event.candidate.toJSON() : null });
    });
    this.pc.addEventListener("track", (event) => {
      this.dispatchEvent(new CustomEvent("track", { detail: { mid: event.transceiver.mid, track: event.track } }));
    });
    this.pc.addEventListener("connectionstatechange", () => {
      this.dispatchEvent(new CustomEvent("state", { detail: this.pc.connectionState }));
    });
  }

  #send(msg) {
    if (this.detached) return;
    if (this.held) this.queue.push(msg);
    else this.send(msg);
  }

  /** Start talking to the server: send what was kept while held (the offer first), in order. */
  release(send) {
    if (send) this.send = send;
    this.held = false;
    const kept = this.queue;
    this.queue = [];
    for (const msg of kept) this.#send(msg);
  }

  /** The track a source is published with (null when none). */
  sourceTrack(source) {
    const transceiver = this.local[source];
    return transceiver ? transceiver.sender.track : null;
  }

  /** Publish (or replace) the track of one source; null stops sending without renegotiating. */
  async setSource(source, track) {
    const existing = this.local[source];
    if (existing) {
      await existing.sender.replaceTrack(track);
      const direction = track ? "sendonly" : source === "screen" ? "inactive" : existing.direction;
      if (existing.direction !== direction) existing.direction = direction;
      return;
    }
    if (!track) return;
    this.local[source] = this.pc.addTransceiver(track, { direction: "sendonly" });
  }

  /** Which of our media ids carries which source, for the server. */
  sources() {
    const out = {};
    for (const [source, transceiver] of Object.entries(this.local)) {
      if (transceiver && transceiver.mid && transceiver.direction === "sendonly") {
        out[transceiver.mid] = source;
      }
    }
    return out;
  }

  async #negotiate() {
    if (this.detached || this.pc.signalingState === "closed") return;
    try {
      this.makingOffer = true;
      await this.pc.setLocalDescription();
      this.#send({ type: "offer", sdp: this.pc.localDescription.sdp, sources: this.sources() });
    } catch (err) {
      console.warn("offer failed", err);
    } finally {
      this.makingOffer = false;
    }
  }

  /** Apply one signalling message from the server. */
  async handle(msg) {
    if (this.detached || this.pc.signalingState === "closed") return;
    if (msg.type === "offer") {
      // We are the polite peer: the server (aiortc) cannot roll back, so its offer always wins.
      if (msg.tracks && typeof msg.tracks === "object") this.remoteTracks = msg.tracks;
      if (this.makingOffer || this.pc.signalingState !== "stable") {
        if (this.pc.signalingState === "have-local-offer") {
          await this.pc.setLocalDescription({ type: "rollback" });
        }
      }
      await this.pc.setRemoteDescription({ type: "offer", sdp: msg.sdp });
      await this.pc.setLocalDescription();
      this.#send({ type: "answer", sdp: this.pc.localDescription.sdp });
      this.dispatchEvent(new Event("tracks"));
    } else if (msg.type === "answer") {
      if (this.pc.signalingState !== "have-local-offer") return; // stale after a rollback
      await this.pc.setRemoteDescription({ type: "answer", sdp: msg.sdp });
    } else if (msg.type === "ice-candidate") {
      try {
        await this.pc.addIceCandidate(msg.candidate || null);
      } catch (err) {
        console.warn("ignored a candidate", err);
      }
    }
  }

  /** The server refused our offer (not for glare, where its own offer follows): start over. */
  async offerRefused() {
    if (this.pc.signalingState === "have-local-offer") {
      await this.pc.setLocalDescription({ type: "rollback" });
    }
  }

  /** Live remote tracks with what the server says they are: [{mid, track, info}]. */
  receiving() {
    const out = [];
    for (const transceiver of this.pc.getTransceivers()) {
      const info = transceiver.mid != null ? this.remoteTracks[transceiver.mid] : null;
      const dir = transceiver.currentDirection;
      if (info && (dir === "recvonly" || dir === "sendrecv") && transceiver.receiver.track) {
        out.push({ mid: transceiver.mid, track: transceiver.receiver.track, info });
      }
    }
    return out;
  }

  /** Stop sending anything to the server (a replacement connection is being set up). */
  detach() {
    this.detached = true;
    this.queue = [];
  }

  close() {
    this.detached = true;
    try {
      this.pc.close();
    } catch {
      /* already closed */
    }
  }
}
