// One websocket per tab to /ws/live. Other scripts import { live } and listen:
//   live.on("message", (event) => ...)   or   window.addEventListener("panda:live", ...)
// It reconnects by itself and, for every watched conversation, resumes after the last message
// seq it delivered, so the server fills the gap: nothing lost, nothing repeated. The watches go
// in the websocket URL, so the server fills them before it forwards anything published meanwhile.
// `message` events with watched === false (a conversation the server was not yet told about) may
// come early or twice: they never move a resume point, and panels dedupe them by seq.

const MAX_BACKOFF_MS = 15000;
const MAX_URL_WATCHES = 50; // the server's limit
const SESSION_ENDED = 4005; // close code: the login session was ended

class Live extends EventTarget {
  constructor() {
    super();
    this.ws = null;
    this.watches = new Map(); // conversation id -> last delivered seq (or null: from now)
    this.urlWatches = new Set(); // ids the current socket's URL already asked for
    this.backoff = 500;
    this.started = false;
    this.ended = false;
    this.connected = false;
    this.unreadTotal = null;
    this.timer = null;
  }

  start() {
    if (this.started) return;
    this.started = true;
    this.connect();
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible" && !this.connected && !this.ended) this.reconnectSoon(0);
    });
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const query = new URLSearchParams();
    const inUrl = new Set();
    for (const [id, seq] of this.watches) {
      if (inUrl.size >= MAX_URL_WATCHES) break;
      query.append("watch", seq == null ? String(id) : `${id}:${seq}`);
      inUrl.add(id);
    }
    const qs = inUrl.size ? `?${query}` : "";
    let ws;
    try {
      ws = new WebSocket(`${scheme}//${location.host}/ws/live${qs}`);
    } catch (err) {
      this.reconnectSoon();
      return;
    }
    this.ws = ws;
    this.urlWatches = inUrl;
    ws.addEventListener("open", () => {
      this.connected = true;
      this.backoff = 500;
      // Watches added while connecting (or beyond the URL's limit) go as messages.
      for (const [id, seq] of this.watches) if (!inUrl.has(id)) this.sendWatch(id, seq);
      this.emit({ type: "connected" });
    });
    ws.addEventListener("message", (msg) => {
      let event;
      try {
        event = JSON.parse(msg.data);
      } catch (err) {
        return;
      }
      if (!event || typeof event.type !== "string") return;
      if (event.type === "message" && event.message && event.watched !== false) {
        const id = event.conversation_id;
        if (this.watches.has(id)) {
          const seen = this.watches.get(id);
          if (seen === null || event.message.seq > seen) this.watches.set(id, event.message.seq);
        }
      }
      if (event.type === "watching" && this.watches.has(event.conversation_id)) {
        const seen = this.watches.get(event.conversation_id);
        if (seen === null || event.seq > seen) this.watches.set(event.conversation_id, event.seq);
      }
      if (typeof event.unread_total === "number") this.setUnreadTotal(event.unread_total);
      this.emit(event);
    });
    ws.addEventListener("close", (ev) => {
      const was = this.connected;
      this.connected = false;
      if (this.ws === ws) this.ws = null;
      if (was) this.emit({ type: "disconnected" });
      if (ev.code === SESSION_ENDED) {
        // Logged out (here or elsewhere): reconnecting would only be refused.
        this.ended = true;
        this.emit({ type: "session_ended" });
        return;
      }
      this.reconnectSoon();
    });
    ws.addEventListener("error", () => {
      /* a close event follows */
    });
  }

  reconnectSoon(delay) {
    if (this.timer) clearTimeout(this.timer);
    const wait = delay ?? this.backoff * (0.75 + Math.random() / 2);
    this.backoff = Math.min(this.backoff * 2, MAX_BACKOFF_MS);
    this.timer = setTimeout(() => {
      this.timer = null;
      if (!this.ws) this.connect();
    }, wait);
  }

  emit(event) {
    this.dispatchEvent(new CustomEvent(event.type, { detail: event }));
    window.dispatchEvent(new CustomEvent("panda:live", { detail: event }));
    // For htmx: hx-trigger="panda:booking from:body" refreshes a fragment on booking changes.
    if (document.body) {
      document.body.dispatchEvent(new CustomEvent(`panda:${event.type}`, { detail: event, bubbles: true }));
    }
    if (event.type === "sessions") renderSessions(event.sessions || []);
    if (event.type === "notification") showNotification(event);
  }

  /** Call fn(event) for every event of this type; returns a function that stops it. */
  on(type, fn) {
    const handler = (e) => fn(e.detail);
    this.addEventListener(type, handler);
    return () => this.removeEventListener(type, handler);
  }

  send(obj) {
    if (this.ws && this.connected) {
      this.ws.send(JSON.stringify(obj));
      return true;
    }
    return false;
  }

  sendWatch(id, seq) {
    this.send({ type: "watch", conversation_id: id, after_seq: seq });
  }

  /** Receive this conversation's messages after `afterSeq` (exactly once, in order). */
  watch(conversationId, afterSeq) {
    const current = this.watches.get(conversationId);
    const seq = current != null && afterSeq != null ? Math.max(current, afterSeq) : afterSeq;
    this.watches.set(conversationId, seq ?? null);
    this.sendWatch(conversationId, seq ?? null);
  }

  /** The page has every message up to `seq`, without gaps (e.g. it loaded them over HTTP). */
  advance(conversationId, seq) {
    const current = this.watches.get(conversationId);
    if (current === undefined) return;
    if (current === null || seq > current) this.watches.set(conversationId, seq);
  }

  /** Drop the websocket (tests, or to simulate a network change); it reconnects by itself. */
  drop() {
    if (this.ws) this.ws.close();
  }

  setUnreadTotal(total) {
    this.unreadTotal = total;
    for (const el of document.querySelectorAll("[data-unread-total]")) el.textContent = String(total);
    for (const el of document.querySelectorAll("[data-unread-some]")) el.hidden = total === 0;
    for (const el of document.querySelectorAll("[data-unread-none]")) el.hidden = total !== 0;
    for (const link of document.querySelectorAll('header a[href="/messages"]')) {
      let badge = link.querySelector(".nav-unread");
      if (!badge) {
        badge = document.createElement("span");
        badge.className = "badge badge-success nav-unread";
        link.append(" ", badge);
      }
      badge.textContent = String(total);
      badge.hidden = total === 0;
      badge.setAttribute("aria-label", `${total} unread`);
    }
  }
}

/** Fill every [data-live-sessions] element (admin pages) with the sessions in progress. */
function renderSessions(sessions) {
  for (const box of document.querySelectorAll("[data-live-sessions]")) {
    if (!sessions.length) {
      const p = document.createElement("p");
      p.className = "muted";
      p.textContent = "No sessions in progress right now.";
      box.replaceChildren(p);
      continue;
    }
    const list = document.createElement("ul");
    for (const s of sessions) {
      const li = document.createElement("li");
      const strong = document.createElement("strong");
      strong.textContent = s.subject;
      const when = new Date(s.start_at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
      const until = new Date(s.end_at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
      li.append(strong, ` · ${s.tutor} with ${s.student} · ${when}–${until} `);
      const badge = document.createElement("span");
      badge.className = s.status === "in_progress" ? "badge badge-success" : "badge";
      badge.textContent = s.status === "in_progress" ? "live" : "starting";
      li.append(badge);
      list.append(li);
    }
    box.replaceChildren(list);
  }
}

/** A small dismissable notice for {"type": "notification", "text", "url"?}. */
function showNotification(event) {
  if (!event.text || !document.body) return;
  let region = document.getElementById("live-notifications");
  if (!region) {
    region = document.createElement("div");
    region.id = "live-notifications";
    region.setAttribute("role", "status");
    region.setAttribute("aria-live", "polite");
    Object.assign(region.style, {
      position: "fixed", right: "1rem", bottom: "1rem", zIndex: "1000", maxWidth: "22rem",
      display: "flex", flexDirection: "column", gap: ".5rem",
    });
    document.body.append(region);
  }
  const note = document.createElement("div");
  note.className = "flash flash-info";
  if (event.url && event.url.startsWith("/") && !event.url.startsWith("//")) {
    const a = document.createElement("a");
    a.href = event.url;
    a.textContent = event.text;
    note.append(a);
  } else {
    note.textContent = event.text;
  }
  const close = document.createElement("button");
  close.type = "button";
  close.className = "link-button";
  close.textContent = "Dismiss";
  Object.assign(close.style, { marginLeft: ".75rem", width: "auto" });
  close.addEventListener("click", () => note.remove());
  note.append(close);
  region.append(note);
  setTimeout(() => note.remove(), 15000);
}

export const live = new Live();
window.pandaLive = live;
live.start();
