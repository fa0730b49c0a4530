// The chat on the call page: the conversation with the other participant, in a side panel
// (desktop) or an overlay (phones). It uses the chat pages' JSON API and /ws/live.
//
// Kept apart from call.js on purpose: it is its own module, starts after the call page is set
// up, and anything that goes wrong here stays here (the call never depends on the chat).

import { mountChat } from "/static/chat/panel.js";
import { live } from "/static/js/live.js";

const WIDE = window.matchMedia("(min-width: 1024px)");
const PREF_KEY = "panda.callChatOpen";

function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

/** The conversation with `otherId` (created once, as from a profile or a session). */
async function openConversation(otherId) {
  const resp = await fetch("/api/conversations", {
    method: "POST",
    credentials: "same-origin",
    headers: { Accept: "application/json", "Content-Type": "application/json", "X-CSRF-Token": csrfToken() },
    body: JSON.stringify({ user_id: otherId }),
  });
  let data = null;
  try {
    data = await resp.json();
  } catch (err) {
    data = null;
  }
  if (!resp.ok || !data || typeof data.id !== "number") {
    throw new Error((data && data.error) || "The chat is not available right now.");
  }
  return data;
}

function readPref() {
  try {
    return window.localStorage.getItem(PREF_KEY);
  } catch (err) {
    return null;
  }
}

function writePref(open) {
  try {
    window.localStorage.setItem(PREF_KEY, open ? "1" : "0");
  } catch (err) {
    /* private mode: the default next time */
  }
}

class CallChat {
  constructor(aside, toggle) {
    this.aside = aside;
    this.toggle = toggle;
    this.layout = aside.closest("[data-call-layout]");
    this.scrim = document.querySelector("[data-chat-scrim]");
    this.badge = toggle.querySelector("[data-chat-unread]");
    this.userId = Number(aside.dataset.userId);
    this.otherId = Number(aside.dataset.otherId);
    this.unseen = new Set(); // seqs from the other person that arrived while closed
    this.panel = null;
    this.conversationId = null;
    this.open = false;

    toggle.hidden = false;
    toggle.addEventListener("click", () => this.setOpen(!this.open, true));
    aside.querySelector("[data-chat-close]").addEventListener("click", () => this.setOpen(false, true));
    if (this.scrim) this.scrim.addEventListener("click", () => this.setOpen(false, true));
    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && this.open && !WIDE.matches) this.setOpen(false, true);
    });
    WIDE.addEventListener("change", () => this.setOpen(this.open, false));
    // Wide screens show the chat unless it was closed before; phones start with the call.
    const pref = readPref();
    this.setOpen(WIDE.matches && pref !== "0", false);
  }

  setOpen(open, byUser) {
    this.open = open;
    this.aside.hidden = !open;
    this.toggle.setAttribute("aria-expanded", String(open));
    this.toggle.classList.toggle("active", open);
    if (this.layout) this.layout.classList.toggle("chat-open", open);
    const overlay = open && !WIDE.matches;
    if (this.scrim) this.scrim.hidden = !overlay;
    document.body.classList.toggle("call-chat-overlay", overlay);
    if (open) {
      this.unseen.clear();
      this.showUnread();
      if (byUser) {
        const input = this.aside.querySelector("[data-chat-input]");
        if (input) input.focus({ preventScroll: true });
        const log = this.aside.querySelector("[data-chat-log]");
        if (log) log.scrollTop = log.scrollHeight;
      }
    } else if (byUser && this.aside.contains(document.activeElement)) {
      this.toggle.focus();
    }
    if (byUser && WIDE.matches) writePref(open);
  }

  showUnread() {
    const n = this.unseen.size;
    this.badge.textContent = String(n);
    this.badge.hidden = n === 0;
    this.badge.setAttribute("aria-label", `${n} unread message${n === 1 ? "" : "s"}`);
  }

  async start() {
    const note = this.aside.querySelector("[data-chat-note]");
    try {
      const conversation = await openConversation(this.otherId);
      this.conversationId = conversation.id;
      const history = this.aside.querySelector("[data-chat-history]");
      if (history) history.href = `/messages/${conversation.id}`;
      const mount = this.aside.querySelector("[data-chat-mount]");
      const box = document.createElement("div");
      mount.replaceChildren(box);
      this.panel = mountChat(box, { conversationId: conversation.id, userId: this.userId });
      this.aside.dataset.conversationId = String(conversation.id);
      live.on("message", (ev) => {
        if (ev.conversation_id !== conversation.id || this.open) return;
        if (ev.message.sender_id === this.userId) return;
        this.unseen.add(ev.message.seq); // a set: the same message may come twice
        this.showUnread();
      });
    } catch (err) {
      if (note) note.textContent = err.message || "The chat is not available right now.";
    }
  }
}

function init() {
  const aside = document.querySelector("[data-call-chat]");
  const toggle = document.querySelector("[data-chat-toggle]");
  if (!aside || !toggle) return;
  try {
    const chat = new CallChat(aside, toggle);
    window.pandaCallChat = chat;
    chat.start();
  } catch (err) {
    // The call goes on without the chat.
    console.error("call chat:", err);
  }
}

// After the call page has set itself up (its preview and pre-join come first).
if (document.readyState === "complete") setTimeout(init, 0);
else window.addEventListener("load", () => setTimeout(init, 0), { once: true });
