// A chat panel for one conversation, used by /messages/<id> and by the call page.
//
//   import { mountChat } from "/static/chat/panel.js";
//   const chat = mountChat(element, { conversationId: 12, userId: 3 });
//   ...; chat.destroy();
//
// `element` may be empty (the panel builds its own markup and loads the newest messages over
// the API) or hold the server-rendered conversation markup (it takes that over). Messages are
// sent over HTTP with a client id (a retry can never duplicate) and arrive over /ws/live.

import { live } from "/static/js/live.js";

const URL_RE = /\bhttps?:\/\/[^\s<>"']+/gi;
const TRAILING = /[.,;:!?)\]}'"]+$/;
const PAGE = 50;

function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  if (meta) return meta.content;
  const field = document.querySelector('input[name="csrf_token"]');
  return field ? field.value : "";
}

function newClientId() {
  if (crypto.randomUUID) return crypto.randomUUID().replaceAll("-", "");
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Append `text` to `parent` as text nodes, with http(s) URLs as links (nothing else). */
export function appendLinkified(parent, text) {
  let pos = 0;
  for (const match of text.matchAll(URL_RE)) {
    const url = match[0].replace(TRAILING, "");
    parent.append(document.createTextNode(text.slice(pos, match.index)));
    let href = null;
    try {
      const parsed = new URL(url);
      if (parsed.protocol === "http:" || parsed.protocol === "https:") href = parsed.href;
    } catch (err) {
      href = null;
    }
    if (href) {
      const a = document.createElement("a");
      a.href = href;
      a.rel = "noopener noreferrer nofollow ugc";
      a.target = "_blank";
      a.textContent = url;
      parent.append(a);
    } else {
      parent.append(document.createTextNode(url));
    }
    pos = match.index + url.length;
  }
  parent.append(document.createTextNode(text.slice(pos)));
}

function formatTime(iso) {
  const when = new Date(iso);
  const now = new Date();
  const opts = { hour: "2-digit", minute: "2-digit", hourCycle: "h23" };
  if (when.toDateString() === now.toDateString()) return when.toLocaleTimeString([], opts);
  return when.toLocaleString([], { day: "numeric", month: "short", ...opts });
}

async function api(method, path, body) {
  const resp = await fetch(path, {
    method,
    credentials: "same-origin",
    headers: {
      Accept: "application/json",
      ...(body ? { "Content-Type": "application/json", "X-CSRF-Token": csrfToken() } : {}),
    },
    body: body ? JSON.stringify(body) : undefined,
  });
  let data = null;
  try {
    data = await resp.json();
  } catch (err) {
    data = null;
  }
  if (!resp.ok) {
    const error = new Error((data && data.error) || `Request failed (${resp.status})`);
    error.status = resp.status;
    error.retryAfter = Number(resp.headers.get("Retry-After") || 0);
    throw error;
  }
  return data;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (v === true) node.setAttribute(k, "");
    else if (v !== false && v != null) node.setAttribute(k, v);
  }
  node.append(...children);
  return node;
}

function buildMarkup(root, maxChars) {
  root.classList.add("chat", "chat-panel");
  const log = el("div", {
    class: "chat-log",
    role: "log",
    "aria-live": "polite",
    "aria-label": "Chat messages",
    tabindex: "0",
    dataset: { chatLog: "" },
  });
  log.append(
    el("ol", { class: "chat-messages", dataset: { chatMessages: "" } }),
    el("p", { class: "chat-seen muted", hidden: true, dataset: { seen: "" } }, "Seen"),
  );
  const id = `chat-text-${Math.random().toString(36).slice(2)}`;
  const form = el("form", { class: "chat-composer", dataset: { chatForm: "" } });
  form.append(
    el("label", { for: id, class: "visually-hidden" }, "Message"),
    el("textarea", {
      id,
      name: "text",
      rows: "1",
      maxlength: String(maxChars),
      required: true,
      placeholder: "Write a message…",
      dataset: { chatInput: "" },
    }),
    el("button", { type: "submit", dataset: { chatSend: "" } }, "Send"),
    el("p", { class: "chat-error", role: "alert", hidden: true, dataset: { chatError: "" } }),
  );
  root.replaceChildren(log, form);
}

export function mountChat(root, options) {
  const conversationId = Number(options.conversationId);
  const userId = Number(options.userId);
  const maxChars = Number(options.maxChars || root.dataset.maxChars || 4000);
  if (!root.querySelector("[data-chat-log]")) buildMarkup(root, maxChars);

  const log = root.querySelector("[data-chat-log]");
  const list = root.querySelector("[data-chat-messages]");
  const form = root.querySelector("[data-chat-form]");
  const input = root.querySelector("[data-chat-input]");
  const errorBox = root.querySelector("[data-chat-error]");
  const seenMarker = root.querySelector("[data-seen]");
  const bySeq = new Map();
  const pending = new Map(); // client id -> <li>
  let otherReadSeq = Number(options.otherReadSeq ?? root.dataset.otherReadSeq ?? 0);
  let hasMore = true;
  let loadingOlder = false;
  let lastReadSent = 0;
  let destroyed = false;
  const stops = [];

  for (const li of list.querySelectorAll("li[data-seq]")) bySeq.set(Number(li.dataset.seq), li);
  const olderLink = root.querySelector("[data-load-older]");
  if (!olderLink && bySeq.size) hasMore = false;
  const olderBlock = olderLink ? olderLink.closest("p") : null;

  const maxSeq = () => (bySeq.size ? Math.max(...bySeq.keys()) : 0);
  const minSeq = () => (bySeq.size ? Math.min(...bySeq.keys()) : 0);
  const nearBottom = () => log.scrollHeight - log.scrollTop - log.clientHeight < 80;
  const scrollToBottom = () => {
    log.scrollTop = log.scrollHeight;
  };

  function showError(text) {
    if (!errorBox) return;
    errorBox.textContent = text || "";
    errorBox.hidden = !text;
  }

  function renderMessage(m) {
    const mine = m.sender_id === userId;
    const li = el("li", {
      class: `chat-msg ${mine ? "mine" : "theirs"}${m.hidden ? " hidden-msg" : ""}`,
      dataset: { seq: String(m.seq), id: String(m.id), sender: String(m.sender_id) },
    });
    const bubble = el("div", { class: "bubble" });
    if (m.hidden) bubble.append(el("em", {}, "Message removed by a moderator"));
    else appendLinkified(bubble, m.text);
    const meta = el("div", { class: "chat-meta" });
    meta.append(el("time", { datetime: m.created_at }, formatTime(m.created_at)));
    if (!mine && !m.hidden) {
      meta.append(
        el("button", { type: "button", class: "link-button", dataset: { report: String(m.id) } }, "Report"),
      );
    }
    li.append(bubble, meta);
    return li;
  }

  function insert(m) {
    if (m.conversation_id !== conversationId) return;
    const stick = nearBottom();
    if (m.client_id && pending.has(m.client_id)) {
      pending.get(m.client_id).remove();
      pending.delete(m.client_id);
    }
    if (bySeq.has(m.seq)) return;
    const li = renderMessage(m);
    // Keep seq order: usually an append, older pages go before.
    let before = null;
    for (const [seq, node] of bySeq) {
      if (seq > m.seq && (!before || seq < Number(before.dataset.seq))) before = node;
    }
    if (before) list.insertBefore(li, before);
    else {
      const firstPending = list.querySelector("li.pending");
      list.insertBefore(li, firstPending);
    }
    bySeq.set(m.seq, li);
    const empty = root.querySelector("[data-empty]");
    if (empty) empty.remove();
    // (live.js keeps its own resume point from what the websocket delivered, which has no
    // gaps; a message we got over HTTP must not move it past one we have not seen yet.)
    updateSeen();
    if (stick || m.sender_id === userId) scrollToBottom();
    maybeMarkRead();
  }

  function updateSeen() {
    if (!seenMarker) return;
    let lastMine = 0;
    for (const [seq, li] of bySeq) if (li.dataset.sender === String(userId) && seq > lastMine) lastMine = seq;
    const seen = lastMine > 0 && otherReadSeq >= lastMine && maxSeq() === lastMine;
    const stick = nearBottom();
    seenMarker.hidden = !seen;
    if (stick) scrollToBottom();
  }

  let readTimer = null;
  // Debounced: a burst of messages (catching up after a reconnect) sends one receipt.
  function maybeMarkRead() {
    if (readTimer) return;
    readTimer = setTimeout(() => {
      readTimer = null;
      markRead();
    }, 250);
  }

  function markRead() {
    if (destroyed || document.visibilityState !== "visible" || !nearBottom()) return;
    const top = maxSeq();
    if (top <= lastReadSent) return;
    lastReadSent = top;
    const sent = live.send({ type: "read", conversation_id: conversationId, seq: top });
    if (!sent) {
      api("POST", `/api/conversations/${conversationId}/read`, { seq: top }).catch(() => {
        lastReadSent = 0;
      });
    }
  }

  async function loadOlder() {
    if (loadingOlder || !hasMore || destroyed) return;
    loadingOlder = true;
    try {
      const first = minSeq();
      const query = first ? `?before=${first}&limit=${PAGE}` : `?limit=${PAGE}`;
      const data = await api("GET", `/api/conversations/${conversationId}/messages${query}`);
      const oldHeight = log.scrollHeight;
      const oldTop = log.scrollTop;
      for (const m of data.messages) insertOlder(m);
      hasMore = data.has_more;
      if (!hasMore && olderBlock) {
        olderBlock.replaceChildren("This is the beginning of your conversation.");
        olderBlock.className = "chat-start muted";
      }
      log.scrollTop = oldTop + (log.scrollHeight - oldHeight);
    } catch (err) {
      showError(err.message);
    } finally {
      loadingOlder = false;
    }
  }

  function insertOlder(m) {
    if (bySeq.has(m.seq)) return;
    const li = renderMessage(m);
    let before = null;
    for (const [seq, node] of bySeq) {
      if (seq > m.seq && (!before || seq < Number(before.dataset.seq))) before = node;
    }
    list.insertBefore(li, before);
    bySeq.set(m.seq, li);
  }

  async function send(text, clientId, li) {
    showError("");
    try {
      const data = await api("POST", `/api/conversations/${conversationId}/messages`, {
        text,
        client_id: clientId,
      });
      insert(data.message);
    } catch (err) {
      if (!err.status) {
        // Network trouble: the same client id makes a retry safe.
        setTimeout(() => {
          if (!destroyed && pending.has(clientId)) send(text, clientId, li);
        }, 2000);
        return;
      }
      li.classList.add("failed");
      const retry = el("button", { type: "button", class: "link-button" }, "Retry");
      retry.addEventListener("click", () => {
        li.classList.remove("failed");
        retry.remove();
        send(text, clientId, li);
      });
      li.querySelector(".chat-meta").replaceChildren(
        el("span", { class: "chat-failed" }, err.status === 429 ? "Too fast: wait a moment." : err.message),
        " ",
        retry,
      );
      showError(err.message);
    }
  }

  function submit(event) {
    if (event) event.preventDefault();
    const text = input.value.trim();
    if (!text) {
      showError("Write a message first.");
      return;
    }
    if (text.length > maxChars) {
      showError(`Messages are limited to ${maxChars} characters.`);
      return;
    }
    const clientId = newClientId();
    const li = el("li", { class: "chat-msg mine pending", dataset: { clientId } });
    const bubble = el("div", { class: "bubble" });
    appendLinkified(bubble, text);
    li.append(bubble, el("div", { class: "chat-meta" }, el("span", {}, "Sending…")));
    list.append(li);
    pending.set(clientId, li);
    const empty = root.querySelector("[data-empty]");
    if (empty) empty.remove();
    input.value = "";
    autosize();
    scrollToBottom();
    send(text, clientId, li);
  }

  function autosize() {
    input.style.height = "auto";
    input.style.height = `${Math.min(input.scrollHeight, 160)}px`;
  }

  async function report(messageId, button) {
    const reason = window.prompt("Why are you reporting this message? (optional)", "");
    if (reason === null) return;
    try {
      await api("POST", `/api/messages/${messageId}/report`, { reason });
      button.replaceWith(el("span", { class: "muted" }, "Reported"));
    } catch (err) {
      showError(err.message);
    }
  }

  // -- wiring --------------------------------------------------------------------------------
  form.addEventListener("submit", submit);
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) submit(e);
  });
  input.addEventListener("input", autosize);
  root.addEventListener("click", (e) => {
    const button = e.target.closest("[data-report]");
    if (button && root.contains(button)) {
      e.preventDefault();
      report(button.dataset.report, button);
    }
    const older = e.target.closest("[data-load-older]");
    if (older) {
      e.preventDefault();
      loadOlder();
    }
  });
  log.addEventListener("scroll", () => {
    if (log.scrollTop < 60) loadOlder();
    maybeMarkRead();
  });
  const onVisible = () => maybeMarkRead();
  document.addEventListener("visibilitychange", onVisible);
  stops.push(() => document.removeEventListener("visibilitychange", onVisible));

  stops.push(
    live.on("message", (ev) => {
      if (ev.conversation_id === conversationId) insert(ev.message);
    }),
  );
  stops.push(
    live.on("message_update", (ev) => {
      const li = bySeq.get(ev.message.seq);
      if (ev.conversation_id !== conversationId || !li) return;
      const fresh = renderMessage({ ...ev.message, sender_id: Number(li.dataset.sender) });
      li.replaceWith(fresh);
      bySeq.set(ev.message.seq, fresh);
    }),
  );
  stops.push(
    live.on("read", (ev) => {
      if (ev.conversation_id === conversationId && ev.user_id !== userId) {
        otherReadSeq = Math.max(otherReadSeq, ev.seq);
        updateSeen();
      }
    }),
  );
  stops.push(live.on("connected", () => showError("")));

  async function start() {
    // Resume from what the page got in one piece (server-rendered or one API page), not from
    // messages the websocket may have passed on meanwhile: those can run ahead of a gap.
    let resumeSeq = maxSeq();
    if (!bySeq.size) {
      try {
        const data = await api("GET", `/api/conversations/${conversationId}/messages?limit=${PAGE}`);
        otherReadSeq = Math.max(otherReadSeq, data.other_read_seq);
        for (const m of data.messages) {
          insertOlder(m);
          resumeSeq = Math.max(resumeSeq, m.seq);
        }
        hasMore = data.has_more;
        if (!data.messages.length) {
          list.after(el("p", { class: "chat-empty-log muted", dataset: { empty: "" } }, "No messages yet."));
        }
      } catch (err) {
        showError(err.message);
      }
    }
    // The server sends anything newer than what we show, then keeps us up to date.
    live.watch(conversationId, resumeSeq);
    updateSeen();
    scrollToBottom();
    maybeMarkRead();
  }
  start();

  return {
    conversationId,
    destroy() {
      destroyed = true;
      for (const stop of stops) stop();
    },
    /** Seqs currently shown, in order (tests). */
    seqs: () => Array.from(list.querySelectorAll("li[data-seq]"), (li) => Number(li.dataset.seq)),
  };
}
