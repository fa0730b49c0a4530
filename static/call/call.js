// The call page: pre-join preview, joining, controls, and recovery without a reload.
import { acquire, captureScreen, describeError, listDevices } from "./media.js";
import { PeerSession } from "./peer.js";
import { Signalling, socketUrl } from "./signalling.js";
import { StatsWatcher } from "./stats.js";

const DISCONNECT_GRACE_MS = 3000; // "disconnected" this long => new peer connection
const CONNECT_TIMEOUT_MS = 15000; // no media connection this long after joining => new peer connection
const BACKOFF_MS = [0, 500, 1000, 2000, 3000, 5000]; // after a socket closed; the first retry is at once
// While the network is down nothing fails, it just goes silent; without these limits a lost
// handshake or a dead socket would only be noticed after TCP's own (growing) retry delays.
const JOIN_REPLY_TIMEOUT_MS = 2000; // a join unanswered this long: the socket is taken for dead
const SOCKET_OPEN_TIMEOUT_MS = 3000; // a socket not open this long is tried again
const CHECK_TIMEOUT_MS = 1500; // the room check before reconnecting
const SILENT_RETRY_MS = 500; // retry after a timeout (not backed off: nothing reached the server)
const SILENT_MAX_FACTOR = 4; // the three timeouts double with each one in a row (a slow server), up to this
// Connected, others publishing, nothing received this long => new peer connection. Longer than
// the server takes to drop a participant whose network died (5 s heartbeat + 2.5 s), so that
// the others do not start over because of someone else's outage.
const MEDIA_STALL_MS = 12000;
const MAX_REDIRECTS = 3; // redirects in a row without a join => back off and ask this server again
const STATUS_TEXT = {
  idle: "Ready to join",
  waiting: "Not open yet",
  connecting: "Connecting…",
  connected: "Connected",
  reconnecting: "Reconnecting…",
  failed: "Connection failed",
  ended: "Ended",
};

class CallPage {
  constructor(root) {
    this.root = root;
    this.sessionId = root.dataset.sessionId;
    this.wsPath = root.dataset.wsPath;
    this.redirectUrl = null; // the signalling socket of the server process holding the room
    this.redirects = 0;
    this.otherName = root.dataset.otherName;
    this.opensAt = new Date(root.dataset.opensAt);
    try {
      this.iceServers = JSON.parse(root.dataset.iceServers || "[]");
    } catch {
      this.iceServers = [];
    }
    this.state = root.dataset.callState;
    this.tracks = { audio: null, video: null, screen: null };
    this.muted = false;
    this.cameraOff = false;
    this.sig = null;
    this.peer = null;
    // The peer connection for the join on its way: made while the socket opens and the
    // server answers the join, so its offer can go out as soon as the join is acknowledged.
    this.nextPeer = null;
    this.participantId = null;
    this.participants = new Map(); // participant_id -> {name, role, media, connection}
    this.leaving = false;
    this.attempt = 0;
    this.silent = 0; // timeouts in a row since the last join reply
    this.timers = {};
    this.stats = new StatsWatcher(root);
    this.q = (sel) => root.querySelector(sel);
    this.bind();
    this.applyState(this.state);
    if (this.state === "idle" || this.state === "waiting") this.startPreview();
    if (this.state === "waiting") this.waitForOpening();
  }

  // ---------- state and UI ----------

  applyState(state) {
    this.state = state;
    this.root.dataset.callState = state;
    this.q("[data-status-text]").textContent = STATUS_TEXT[state] || state;
    for (const el of this.root.querySelectorAll("[data-show]")) {
      el.hidden = !el.dataset.show.split(" ").includes(state);
    }
    const join = this.q('[data-action="join"]');
    if (join) join.disabled = state !== "idle";
  }

  banner(text) {
    const el = this.q("[data-banner]");
    el.textContent = text || "";
    el.hidden = !text;
  }

  toast(text) {
    const list = this.q("[data-toasts]");
    const item = document.createElement("li");
    item.textContent = text;
    list.append(item);
    setTimeout(() => item.remove(), 5000);
    while (list.children.length > 4) list.firstElementChild.remove();
  }

  bind() {
    this.q("[data-prejoin-form]").addEventListener("submit", (event) => {
      event.preventDefault();
      this.join();
    });
    const on = (action, fn) => {
      const el = this.q(`[data-action="${action}"]`);
      if (el) el.addEventListener("click", fn);
    };
    on("mute", () => this.toggleMute());
    on("camera", () => this.toggleCamera());
    on("screen", () => this.toggleScreen());
    on("fullscreen", () => this.toggleFullscreen());
    on("leave", () => this.leave());
    on("end", () => this.endForAll());
    on("retry", () => this.retry());
    for (const select of this.root.querySelectorAll("select[data-device]")) {
      select.addEventListener("change", () => this.switchDevice(select.dataset.device, select.value));
    }
    document.addEventListener("fullscreenchange", () => {
      this.setPressed("fullscreen", Boolean(document.fullscreenElement));
    });
    window.addEventListener("pagehide", () => {
      if (this.sig) this.sig.send({ type: "leave" });
    });
  }

  setPressed(action, pressed, label) {
    const el = this.q(`[data-action="${action}"]`);
    if (!el) return;
    el.setAttribute("aria-pressed", String(pressed));
    if (label) el.querySelector("[data-label]").textContent = label;
  }

  // ---------- pre-join ----------

  async waitForOpening() {
    const tick = () => {
      const ms = this.opensAt - Date.now();
      const el = this.q("[data-countdown]");
      if (ms <= 0) {
        if (this.state === "waiting") this.applyState("idle");
        return;
      }
      const minutes = Math.ceil(ms / 60000);
      if (el) el.textContent = minutes > 90 ? "" : `That is in ${minutes} minute${minutes === 1 ? "" : "s"}.`;
      this.timers.waiting = setTimeout(tick, Math.min(ms, 15000));
    };
    const local = this.q("[data-opens-local]");
    if (local) local.textContent = this.opensAt.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    tick();
  }

  async startPreview() {
    const got = await acquire();
    this.tracks.audio = got.audio;
    this.tracks.video = got.video;
    this.showProblems(got.problems);
    this.showPreview();
    await this.fillDevices();
  }

  showPreview() {
    const video = this.q("#preview-video");
    const placeholder = this.q("[data-preview-placeholder]");
    if (this.tracks.video) {
      video.srcObject = new MediaStream([this.tracks.video]);
      placeholder.hidden = true;
    } else {
      video.srcObject = null;
      placeholder.hidden = false;
      placeholder.textContent = "No camera: the others will see your name instead.";
    }
  }

  showProblems(problems) {
    const box = this.q("[data-device-problems]");
    box.replaceChildren();
    for (const text of problems) {
      const p = document.createElement("p");
      p.textContent = text;
      box.append(p);
    }
    if (problems.length && !this.tracks.audio && !this.tracks.video) {
      const p = document.createElement("p");
      p.textContent = "You can still join to watch and listen.";
      box.append(p);
    }
    box.hidden = problems.length === 0;
  }

  async fillDevices() {
    const devices = await listDevices();
    for (const select of this.root.querySelectorAll("select[data-device]")) {
      const kind = select.dataset.device;
      const current = kind === "videoinput" ? this.tracks.video : this.tracks.audio;
      const currentId = current ? current.getSettings().deviceId : "";
      const first = select.options[0];
      select.replaceChildren(first);
      devices[kind].forEach((device, i) => {
        const option = document.createElement("option");
        option.value = device.deviceId;
        option.textContent = device.label || `${kind === "videoinput" ? "Camera" : "Microphone"} ${i + 1}`;
        option.selected = device.deviceId === currentId;
        select.append(option);
      });
    }
  }

  async switchDevice(kind, deviceId) {
    const isVideo = kind === "videoinput";
    const old = isVideo ? this.tracks.video : this.tracks.audio;
    if (old) old.stop();
    const got = await acquire(isVideo ? { cameraId: deviceId, audio: false } : { micId: deviceId, video: false });
    const track = isVideo ? got.video : got.audio;
    if (isVideo) this.tracks.video = track;
    else this.tracks.audio = track;
    this.showProblems(got.problems);
    this.showPreview();
  }

  // ---------- joining and recovery ----------

  join() {
    if (this.state !== "idle") return;
    this.leaving = false;
    this.applyState("connecting");
    const self = this.q("#self-video");
    self.srcObject = this.tracks.video ? new MediaStream([this.tracks.video]) : null;
    this.cameraOff = !this.tracks.video;
    this.setPressed("camera", this.cameraOff, this.cameraOff ? "Start video" : "Stop video");
    this.setPressed("mute", !this.tracks.audio, this.tracks.audio ? "Mute" : "No microphone");
    this.muted = !this.tracks.audio;
    this.timers.stats = setInterval(() => this.tick().catch(() => {}), 2000);
    this.openSocket();
  }

  openSocket() {
    clearTimeout(this.timers.reconnect);
    if (this.sig) this.sig.close();
    const sig = new Signalling(this.redirectUrl || socketUrl(this.wsPath));
    this.sig = sig;
    this.stats.field("signalling", "connecting");
    sig.addEventListener("open", () => {
      clearTimeout(this.timers.socketOpen);
      this.stats.field("signalling", "open");
      this.sendJoin(sig);
    });
    this.timers.socketOpen = setTimeout(() => {
      if (this.sig === sig && !sig.isOpen) this.socketSilent();
    }, this.patience(SOCKET_OPEN_TIMEOUT_MS));
    // One message at a time, in order: an offer must be applied before the next candidate.
    let chain = Promise.resolve();
    sig.addEventListener("message", (event) => {
      chain = chain.then(() => (this.sig === sig ? this.onMessage(event.detail) : null)).catch((err) => console.warn(err));
    });
    sig.addEventListener("close", (event) => this.onSocketClose(event.detail));
    sig.connect();
    this.preparePeer();
  }

  /** Send a join and expect its reply in time: during an outage a socket dies silently. */
  sendJoin(sig) {
    if (!this.nextPeer) this.preparePeer();
    sig.send({ type: "join" });
    clearTimeout(this.timers.joinReply);
    this.timers.joinReply = setTimeout(() => {
      if (this.sig === sig) this.socketSilent();
    }, this.patience(JOIN_REPLY_TIMEOUT_MS));
  }

  /**
   * Set up the peer connection of the next join (publishing what we have, offer made, ICE
   * gathering) without sending anything: it talks to the server once the join is acknowledged.
   */
  preparePeer() {
    this.dropNextPeer();
    const peer = new PeerSession({ iceServers: this.iceServers, send: () => {}, held: true });
    this.addSources(peer);
    this.nextPeer = peer;
  }

  dropNextPeer() {
    if (this.nextPeer) this.nextPeer.close();
    this.nextPeer = null;
  }

  addSources(peer) {
    if (this.tracks.audio) peer.setSource("microphone", this.tracks.audio);
    if (this.tracks.video && !this.cameraOff) peer.setSource("camera", this.tracks.video);
    if (this.tracks.screen) peer.setSource("screen", this.tracks.screen);
  }

  /** A prepared connection publishes what is switched on now (the user may have changed it meanwhile). */
  syncSources(peer) {
    const wanted = {
      microphone: this.tracks.audio,
      camera: this.cameraOff ? null : this.tracks.video,
      screen: this.tracks.screen,
    };
    for (const [source, track] of Object.entries(wanted)) {
      if (peer.sourceTrack(source) !== (track || null)) peer.setSource(source, track || null);
    }
  }

  /** A timeout, longer after each one in a row: a slow server still gets through. */
  patience(ms) {
    return ms * Math.min(2 ** this.silent, SILENT_MAX_FACTOR);
  }

  /** The socket went silent (no open, no join reply): drop it and start over on a new one. */
  socketSilent() {
    if (this.leaving || !["connecting", "connected", "reconnecting"].includes(this.state)) return;
    this.silent += 1;
    this.stats.field("signalling", "no answer");
    if (this.sig) this.sig.close();
    this.sig = null;
    this.dropNextPeer();
    this.redirectUrl = null; // start again at this page's own server, as after a close
    if (this.peer) this.peer.detach();
    this.applyState("reconnecting");
    this.banner("Connection lost. Reconnecting…");
    clearTimeout(this.timers.reconnect);
    this.timers.reconnect = setTimeout(() => this.checkThenReconnect(), 0);
  }

  onSocketClose({ code }) {
    clearTimeout(this.timers.joinReply);
    clearTimeout(this.timers.socketOpen);
    this.dropNextPeer(); // its join will not be answered
    this.stats.field("signalling", `closed (${code})`);
    // Reconnects start at this page's own server, which knows where the room lives now
    // (the process we were sent to may be the one that went away).
    this.redirectUrl = null;
    if (this.leaving || this.state === "ended" || this.state === "failed") return;
    if (code === 4001) return this.finish("replaced");
    if (code === 4005) {
      // The login session ended (logged out elsewhere, password changed): rejoining needs a login.
      this.finish("ended");
      window.location.assign(`/login?next=${encodeURIComponent(window.location.pathname)}`);
      return;
    }
    if (code === 4002) return this.finish("ended");
    if (code === 4003) return this.backToWaiting();
    if (code === 4004) {
      // Redirected: the redirect message (queued before this close) opens the next socket.
      clearTimeout(this.timers.reconnect);
      this.timers.reconnect = setTimeout(() => this.scheduleReconnect(), 2000);
      return;
    }
    this.scheduleReconnect();
  }

  scheduleReconnect() {
    clearTimeout(this.timers.joinReply);
    clearTimeout(this.timers.socketOpen);
    if (this.peer) this.peer.detach();
    this.applyState("reconnecting");
    this.banner("Connection lost. Reconnecting…");
    const delay = BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)];
    this.attempt += 1;
    clearTimeout(this.timers.reconnect);
    this.timers.reconnect = setTimeout(() => this.checkThenReconnect(), delay);
  }

  async checkThenReconnect() {
    if (this.leaving || this.state !== "reconnecting") return;
    // Ask the API first: a closed socket says nothing about why (ended, no access, server down).
    let info = null;
    try {
      const resp = await fetch(`/api/sessions/${this.sessionId}/room`, {
        credentials: "same-origin",
        signal: AbortSignal.timeout(this.patience(CHECK_TIMEOUT_MS)),
      });
      if (resp.status === 401 || resp.status === 403 || resp.status === 404) {
        const body = await resp.json().catch(() => ({}));
        return this.fail(body.error || "You no longer have access to this call.");
      }
      if (resp.ok) info = await resp.json();
    } catch (err) {
      if (err && err.name === "TimeoutError") {
        this.silent += 1;
        // Silence, not a refusal: the network is probably down. Try again soon, so that
        // the call is back as soon as it returns.
        clearTimeout(this.timers.reconnect);
        this.timers.reconnect = setTimeout(() => this.checkThenReconnect(), SILENT_RETRY_MS);
        return;
      }
      /* server unreachable: keep trying */
    }
    if (this.leaving || this.state === "ended" || this.state === "failed") return;
    if (info && info.window === "ended") return this.finish("ended");
    if (info && info.window === "not_open") return this.backToWaiting();
    if (!info) return this.scheduleReconnect();
    this.openSocket();
  }

  /** A new peer connection on the same socket (the server replaces our old one). */
  rejoin(reason) {
    if (this.leaving || this.state === "ended" || this.state === "failed") return;
    clearTimeout(this.timers.disconnect);
    clearTimeout(this.timers.connect);
    this.applyState("reconnecting");
    this.banner(reason);
    if (this.peer) this.peer.detach();
    if (this.sig && this.sig.isOpen) this.sendJoin(this.sig);
    else this.scheduleReconnect();
  }

  retry() {
    this.attempt = 0;
    this.leaving = false;
    this.applyState("connecting");
    this.openSocket();
  }

  async onMessage(msg) {
    switch (msg.type) {
      case "join":
        return this.onJoined(msg);
      case "offer":
      case "answer":
      case "ice-candidate":
        if (this.peer) await this.peer.handle(msg);
        return;
      case "participant-joined":
        this.participants.set(msg.participant_id, msg);
        this.stats.expectMedia();
        this.toast(`${msg.name} joined`);
        this.renderRemote();
        return;
      case "participant-left": {
        const who = this.participants.get(msg.participant_id);
        this.participants.delete(msg.participant_id);
        if (who) this.toast(`${who.name} left`);
        this.renderRemote();
        return;
      }
      case "participant-state": {
        const who = this.participants.get(msg.participant_id);
        if (who && msg.connection === "connected" && who.connection !== "connected") {
          this.stats.expectMedia();
        }
        if (who) who.connection = msg.connection;
        return;
      }
      case "media-state":
        return this.onMediaState(msg);
      case "leave":
        if (msg.reason === "replaced") return this.finish("replaced");
        if (msg.reason === "ended") return this.finish("ended");
        return;
      case "redirect":
        return this.onRedirect(msg);
      case "recording":
        // The record control (static/recordings/call_record.js) listens for these.
        document.dispatchEvent(new CustomEvent("panda:recording", { detail: msg }));
        return;
      case "error":
        return this.onError(msg);
      default:
        return;
    }
  }

  onJoined(msg) {
    clearTimeout(this.timers.joinReply);
    this.silent = 0;
    this.participantId = msg.participant_id;
    this.redirects = 0;
    const indicator = document.querySelector("[data-recording-indicator]");
    if (indicator && indicator.hidden === Boolean(msg.recording)) {
      // The recording started or stopped while we were away (reconnect).
      const state = msg.recording ? "started" : "stopped";
      document.dispatchEvent(new CustomEvent("panda:recording", { detail: { type: "recording", state } }));
    }
    this.participants = new Map((msg.participants || []).map((p) => [p.participant_id, p]));
    const iceServers = Array.isArray(msg.ice_servers) ? msg.ice_servers : this.iceServers;
    let peer = this.nextPeer;
    this.nextPeer = null;
    if (peer && JSON.stringify(peer.iceServers) !== JSON.stringify(iceServers)) {
      peer.close(); // prepared for other ICE servers than the server names now
      peer = null;
    }
    this.iceServers = iceServers;
    if (this.peer) this.peer.close();
    const send = (m) => this.sig && this.sig.send(m);
    const prepared = Boolean(peer);
    if (!peer) peer = new PeerSession({ iceServers, send });
    this.peer = peer;
    peer.addEventListener("track", () => this.renderRemote());
    peer.addEventListener("tracks", () => this.renderRemote());
    peer.addEventListener("state", (event) => this.onPeerState(peer, event.detail));
    if (prepared) {
      peer.release(send); // its offer (made meanwhile) goes out now
      this.syncSources(peer);
    } else {
      this.addSources(peer);
    }
    this.sendMediaState();
    this.renderRemote();
    clearTimeout(this.timers.connect);
    if (peer.pc.getTransceivers().length) {
      this.timers.connect = setTimeout(() => {
        if (this.peer === peer && peer.pc.connectionState !== "connected") this.rejoin("Still connecting. Trying again…");
      }, CONNECT_TIMEOUT_MS);
    } else {
      // Receive-only and alone: nothing to connect until someone publishes.
      this.onConnected();
    }
  }

  async tick() {
    const peer = this.peer;
    if (!peer) return;
    await this.stats.update(peer.pc);
    // Safety net: the others publish and the relay says they are connected, yet nothing has
    // arrived for a while. Whatever went wrong on the way, a new peer connection fixes it.
    const now = performance.now();
    const expecting = [...this.participants.values()].some(
      (p) => p.connection === "connected" && p.media && (p.media.audio || p.media.video || p.media.screen));
    if (this.state === "connected" && peer === this.peer && expecting &&
        now - this.connectedAt > MEDIA_STALL_MS && now - this.stats.lastInboundGrowth > MEDIA_STALL_MS) {
      this.rejoin("Restoring the media connection…");
    }
  }

  onConnected() {
    this.connectedAt = performance.now();
    this.stats.reset();
    clearTimeout(this.timers.connect);
    clearTimeout(this.timers.disconnect);
    this.attempt = 0;
    this.banner("");
    this.applyState("connected");
  }

  onPeerState(peer, state) {
    if (peer !== this.peer) return;
    this.stats.field("ice", state);
    if (state === "connected") {
      this.onConnected();
    } else if (state === "failed") {
      this.rejoin("The connection failed. Reconnecting…");
    } else if (state === "disconnected") {
      clearTimeout(this.timers.disconnect);
      if (this.state === "connected") this.banner("Connection unstable…");
      this.timers.disconnect = setTimeout(() => {
        if (this.peer === peer && peer.pc.connectionState !== "connected") {
          this.rejoin("Connection lost. Reconnecting…");
        }
      }, DISCONNECT_GRACE_MS);
    }
  }

  onMediaState(msg) {
    const who = this.participants.get(msg.participant_id);
    if (!who) return;
    const before = who.media || {};
    who.media = { audio: msg.audio, video: msg.video, screen: msg.screen };
    if (before.audio !== undefined && before.audio !== msg.audio) this.toast(`${who.name} ${msg.audio ? "unmuted" : "muted"}`);
    if (before.video !== undefined && before.video !== msg.video) this.toast(`${who.name} turned the camera ${msg.video ? "on" : "off"}`);
    if (before.screen !== msg.screen && (before.screen !== undefined || msg.screen)) {
      this.toast(`${who.name} ${msg.screen ? "is sharing the screen" : "stopped sharing"}`);
    }
    this.renderRemote();
  }

  onRedirect(msg) {
    // Another server process holds this room: talk to its signalling socket instead. Only this
    // call's socket on this site's host (any port) is followed.
    if (this.leaving || this.state === "ended" || this.state === "failed") return;
    let url;
    try {
      url = new URL(msg.url);
    } catch {
      return;
    }
    const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    if (url.protocol !== scheme || url.hostname !== window.location.hostname || url.pathname !== this.wsPath) return;
    this.redirects += 1;
    if (this.redirects > MAX_REDIRECTS) {
      this.redirects = 0;
      this.sig.close();
      return this.scheduleReconnect();
    }
    this.redirectUrl = url.href;
    this.openSocket();
  }

  async onError(msg) {
    console.warn("call error", msg.code, msg.message);
    if (msg.code !== "glare" && this.peer) await this.peer.offerRefused();
    if (msg.code === "room-ended") return this.finish("ended");
    if (msg.code === "room-not-open") return this.backToWaiting();
    if (msg.code === "closed" && this.state !== "reconnecting") {
      // The relay dropped our peer connection (it went silent or failed): start a new one.
      return this.rejoin("Reconnecting…");
    }
    if (msg.code === "no-common-codec") {
      this.fail("Your browser cannot send or receive a video format this call uses. Try a current Chrome or Firefox.");
    } else if (msg.code === "media-unavailable") {
      this.fail("Calls are not available on this server right now.");
    }
  }

  sendMediaState() {
    if (!this.sig) return;
    this.sig.send({
      type: "media-state",
      audio: Boolean(this.tracks.audio) && !this.muted,
      video: Boolean(this.tracks.video) && !this.cameraOff,
      screen: Boolean(this.tracks.screen),
    });
  }

  // ---------- remote media ----------

  renderRemote() {
    const grid = this.q("[data-remote-grid]");
    const empty = this.q("[data-stage-empty]");
    const live = this.peer ? this.peer.receiving() : [];
    const keep = new Set();
    for (const { mid, track, info } of live) {
      keep.add(mid);
      if (info.kind === "audio") {
        this.ensureAudio(mid, track);
        continue;
      }
      let tile = grid.querySelector(`[data-mid="${CSS.escape(mid)}"]`);
      if (!tile) {
        tile = document.createElement("figure");
        tile.className = "tile";
        tile.dataset.mid = mid;
        const video = document.createElement("video");
        video.className = "remote-video";
        video.autoplay = true;
        video.playsInline = true;
        video.muted = true; // sound plays through the audio elements
        const caption = document.createElement("figcaption");
        const off = document.createElement("div");
        off.className = "camera-off";
        off.hidden = true;
        tile.append(video, off, caption);
        grid.append(tile);
      }
      const video = tile.querySelector("video");
      if (!video.srcObject || video.srcObject.getVideoTracks()[0] !== track) {
        video.srcObject = new MediaStream([track]);
        video.play().catch(() => {});
      }
      const who = this.participants.get(info.participant_id) || { name: "Participant", media: {} };
      video.dataset.participantId = info.participant_id;
      video.dataset.source = info.source;
      tile.classList.toggle("tile-screen", info.source === "screen");
      const caption = tile.querySelector("figcaption");
      caption.textContent = info.source === "screen" ? `${who.name}'s screen` : who.name;
      if (info.source === "camera" && who.media && who.media.audio === false) {
        const flag = document.createElement("span");
        flag.className = "flag";
        flag.textContent = "muted";
        caption.append(flag);
      }
      const off = tile.querySelector(".camera-off");
      const cameraOff = info.source === "camera" && who.media && who.media.video === false;
      off.hidden = !cameraOff;
      if (cameraOff) {
        off.replaceChildren();
        const avatar = document.createElement("p");
        avatar.className = "call-avatar";
        avatar.textContent = (who.name || "?").slice(0, 1);
        const text = document.createElement("p");
        text.textContent = `${who.name} turned the camera off`;
        off.append(avatar, text);
      }
    }
    for (const el of this.root.querySelectorAll("[data-mid]")) {
      if (!keep.has(el.dataset.mid)) el.remove();
    }
    empty.hidden = grid.querySelector(".tile") !== null;
    const others = [...this.participants.values()];
    let text = `Waiting for ${this.otherName} to join…`;
    if (others.length) {
      const names = others.map((p) => p.name).join(" and ");
      const withoutCamera = others.every((p) => p.media && p.media.video === false && !p.media.screen);
      text = withoutCamera ? `${names} joined without a camera` : `Connecting to ${names}…`;
    }
    this.q("[data-stage-empty-text]").textContent = text;
  }

  ensureAudio(mid, track) {
    let audio = this.root.querySelector(`audio[data-mid="${CSS.escape(mid)}"]`);
    if (!audio) {
      audio = document.createElement("audio");
      audio.dataset.mid = mid;
      audio.className = "remote-audio";
      audio.autoplay = true;
      this.root.append(audio);
    }
    if (!audio.srcObject || audio.srcObject.getAudioTracks()[0] !== track) {
      audio.srcObject = new MediaStream([track]);
      audio.play().catch(() => this.banner("Click anywhere to hear the others."));
    }
  }

  // ---------- controls ----------

  toggleMute() {
    if (!this.tracks.audio) {
      this.toast("No microphone is available.");
      return;
    }
    this.muted = !this.muted;
    this.tracks.audio.enabled = !this.muted;
    this.setPressed("mute", this.muted, this.muted ? "Unmute" : "Mute");
    this.updateSelfFlags();
    this.sendMediaState();
  }

  async toggleCamera() {
    if (!this.cameraOff) {
      this.cameraOff = true;
      if (this.peer) await this.peer.setSource("camera", null);
      if (this.tracks.video) this.tracks.video.stop();
      this.tracks.video = null;
      this.q("#self-video").srcObject = null;
    } else {
      const cameraId = this.q("#camera-select").value;
      const got = await acquire({ cameraId, audio: false });
      if (!got.video) {
        this.toast(got.problems[0] || "The camera could not be started.");
        return;
      }
      this.cameraOff = false;
      this.tracks.video = got.video;
      this.q("#self-video").srcObject = new MediaStream([got.video]);
      if (this.peer) await this.peer.setSource("camera", got.video);
    }
    this.setPressed("camera", this.cameraOff, this.cameraOff ? "Start video" : "Stop video");
    this.updateSelfFlags();
    this.sendMediaState();
  }

  async toggleScreen() {
    if (this.tracks.screen) return this.stopScreen();
    let track;
    try {
      track = await captureScreen();
    } catch (err) {
      this.toast(err.message || describeError(err, "video"));
      return;
    }
    if (!track) return;
    this.tracks.screen = track;
    track.addEventListener("ended", () => this.stopScreen());
    if (this.peer) await this.peer.setSource("screen", track);
    this.setPressed("screen", true, "Stop sharing");
    this.sendMediaState();
  }

  async stopScreen() {
    const track = this.tracks.screen;
    if (!track) return;
    this.tracks.screen = null;
    track.stop();
    if (this.peer) await this.peer.setSource("screen", null);
    this.setPressed("screen", false, "Share screen");
    this.sendMediaState();
  }

  updateSelfFlags() {
    const flags = this.q("[data-self-flags]");
    flags.replaceChildren();
    if (this.muted) {
      const flag = document.createElement("span");
      flag.className = "flag";
      flag.textContent = "muted";
      flags.append(flag);
    }
  }

  async toggleFullscreen() {
    const stage = this.q(".stage");
    try {
      if (document.fullscreenElement) await document.exitFullscreen();
      else await stage.requestFullscreen();
    } catch {
      this.toast("Fullscreen is not available here.");
    }
  }

  leave() {
    this.leaving = true;
    if (this.sig) {
      this.sig.send({ type: "leave" });
      this.sig.close();
    }
    this.teardown();
    this.applyState("ended");
    this.q("[data-ended-title]").textContent = "You left the call";
    this.q("[data-ended-text]").textContent = "You can come back while the session's room is open.";
    this.q("[data-rejoin]").hidden = false;
  }

  async endForAll() {
    const token = document.querySelector('meta[name="csrf-token"]').content;
    const resp = await fetch(`/api/sessions/${this.sessionId}/room/end`, {
      method: "POST",
      headers: { "X-CSRF-Token": token },
      credentials: "same-origin",
    });
    if (!resp.ok) {
      const body = await resp.json().catch(() => ({}));
      this.toast(body.error || "The call could not be ended.");
      return;
    }
    this.finish("ended");
  }

  teardown() {
    for (const timer of Object.values(this.timers)) {
      clearTimeout(timer);
      clearInterval(timer);
    }
    this.dropNextPeer();
    if (this.peer) this.peer.close();
    this.peer = null;
    for (const track of Object.values(this.tracks)) if (track) track.stop();
    for (const el of this.root.querySelectorAll("audio[data-mid]")) el.remove();
  }

  finish(reason) {
    this.leaving = true;
    if (this.sig) this.sig.close();
    this.teardown();
    this.banner("");
    this.applyState("ended");
    if (reason === "replaced") {
      this.q("[data-ended-title]").textContent = "You joined from another window";
      this.q("[data-ended-text]").textContent = "The call continues there.";
    }
  }

  fail(text) {
    this.leaving = true;
    if (this.sig) this.sig.close();
    this.dropNextPeer();
    if (this.peer) this.peer.close();
    this.peer = null;
    this.banner("");
    this.q("[data-failed-text]").textContent = text;
    this.applyState("failed");
  }

  backToWaiting() {
    if (this.sig) this.sig.close();
    this.dropNextPeer();
    if (this.peer) this.peer.close();
    this.peer = null;
    this.applyState("waiting");
    this.showPreview();
    this.waitForOpening();
  }
}

const root = document.getElementById("call");
if (root) {
  // Exposed for diagnostics and automated tests (window.pandaCall.peer.pc.getStats()).
  window.pandaCall = new CallPage(root);
}
