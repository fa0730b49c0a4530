// Connection details from getStats(): transport, route, round trip, bitrates, received video.

function fmtRate(bits) {
  if (!Number.isFinite(bits) || bits < 0) return "–";
  return bits >= 1e6 ? `${(bits / 1e6).toFixed(2)} Mbit/s` : `${Math.round(bits / 1e3)} kbit/s`;
}

export class StatsWatcher {
  constructor(root) {
    this.root = root;
    this.prev = null;
    this.last = {};
    this.lastInboundGrowth = performance.now(); // when received bytes last went up
  }

  field(name, text) {
    const el = this.root.querySelector(`[data-detail="${name}"]`);
    if (el) el.textContent = text;
  }

  /** Forget the previous sample (a new peer connection starts counting from zero). */
  reset() {
    this.prev = null;
    this.lastInboundGrowth = performance.now();
  }

  /** Someone (re)connected: their media gets its time before silence counts as a stall. */
  expectMedia() {
    this.lastInboundGrowth = Math.max(this.lastInboundGrowth, performance.now());
  }

  /** Read the peer connection's statistics once and show them. */
  async update(pc) {
    if (!pc || pc.connectionState === "closed") return;
    const report = await pc.getStats();
    let pair = null;
    let bytesIn = 0;
    let bytesOut = 0;
    let video = null;
    const byId = new Map();
    report.forEach((s) => byId.set(s.id, s));
    report.forEach((s) => {
      if (s.type === "transport" && s.selectedCandidatePairId) pair = byId.get(s.selectedCandidatePairId) || pair;
      if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded" && !pair) pair = s;
      if (s.type === "inbound-rtp") {
        bytesIn += s.bytesReceived || 0;
        if (s.kind === "video" && (!video || (s.framesDecoded || 0) > (video.framesDecoded || 0))) video = s;
      }
      if (s.type === "outbound-rtp") bytesOut += s.bytesSent || 0;
    });
    const now = performance.now();
    if (this.prev) {
      const dt = (now - this.prev.at) / 1000;
      if (dt > 0) {
        this.field("in", fmtRate(((bytesIn - this.prev.bytesIn) * 8) / dt));
        this.field("out", fmtRate(((bytesOut - this.prev.bytesOut) * 8) / dt));
      }
    }
    if (!this.prev || bytesIn > this.prev.bytesIn) this.lastInboundGrowth = now;
    this.prev = { at: now, bytesIn, bytesOut };
    this.field("ice", pc.connectionState);
    if (pair) {
      const local = byId.get(pair.localCandidateId) || {};
      const remote = byId.get(pair.remoteCandidateId) || {};
      const protocol = (local.protocol || remote.protocol || "?").toUpperCase();
      const relayed = local.candidateType === "relay" ? " via TURN relay" : "";
      this.field("transport", `${protocol}${relayed}`);
      this.field("route", `${local.address || local.ip || "?"}:${local.port || "?"} → ${remote.address || remote.ip || "?"}:${remote.port || "?"}`);
      if (Number.isFinite(pair.currentRoundTripTime)) {
        this.field("rtt", `${Math.round(pair.currentRoundTripTime * 1000)} ms`);
      }
      this.last = { transport: protocol.toLowerCase(), local: local.address, remote: remote.address };
    }
    if (video && video.frameWidth) {
      const fps = video.framesPerSecond ? `, ${Math.round(video.framesPerSecond)} fps` : "";
      this.field("video", `${video.frameWidth}×${video.frameHeight}${fps}`);
    }
  }
}
