// /messages/<id>: take over the server-rendered conversation and make it live.
import { mountChat } from "/static/chat/panel.js";
import { live } from "/static/js/live.js";

const root = document.querySelector("[data-chat]");
if (root && !root.dataset.olderPage) {
  window.pandaChat = mountChat(root, {
    conversationId: root.dataset.conversationId,
    userId: root.dataset.userId,
    otherReadSeq: root.dataset.otherReadSeq,
    maxChars: root.dataset.maxChars,
  });
}

// Presence of the other person.
live.on("presence", (ev) => {
  for (const dot of document.querySelectorAll(`[data-presence-user="${ev.user_id}"]`)) {
    dot.classList.toggle("online", ev.online);
  }
  for (const label of document.querySelectorAll(`[data-presence-label="${ev.user_id}"]`)) {
    label.textContent = ev.online ? "Online" : "Offline";
  }
});
