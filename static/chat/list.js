// /messages: keep unread badges, previews, order and presence up to date.
import { live } from "/static/js/live.js";

const list = document.querySelector(".chat-list");

function setUnread(id, count) {
  const badge = document.querySelector(`[data-unread-for="${id}"]`);
  if (!badge) return;
  badge.firstChild.textContent = String(count);
  badge.hidden = count === 0;
  badge.closest("li")?.classList.toggle("has-unread", count > 0);
}

live.on("message", (ev) => {
  const item = document.querySelector(`.chat-list-item[data-conversation-id="${ev.conversation_id}"]`);
  if (!item) {
    // A new conversation: the simplest correct thing is to reload the list.
    if (list || document.querySelector(".chat-empty")) location.reload();
    return;
  }
  const preview = item.querySelector(`[data-preview-for="${ev.conversation_id}"]`);
  if (preview) {
    const mine = String(ev.message.sender_id) === document.querySelector("[data-user-id]")?.dataset.userId;
    const text = ev.message.hidden ? "Message removed by a moderator" : ev.message.text;
    preview.textContent = (mine ? "You: " : "") + (text.length > 90 ? `${text.slice(0, 87)}…` : text);
  }
  const time = item.querySelector("time");
  if (time) {
    time.dateTime = ev.message.created_at;
    time.textContent = new Date(ev.message.created_at).toLocaleTimeString([], {
      hour: "2-digit",
      minute: "2-digit",
      hourCycle: "h23",
    });
  }
  if (typeof ev.unread === "number") setUnread(ev.conversation_id, ev.unread);
  if (list && list.firstElementChild !== item) list.prepend(item);
});

live.on("read", (ev) => {
  if (typeof ev.unread === "number") setUnread(ev.conversation_id, ev.unread);
});

live.on("presence", (ev) => {
  for (const dot of document.querySelectorAll(`[data-presence-user="${ev.user_id}"]`)) {
    dot.classList.toggle("online", ev.online);
    dot.setAttribute("aria-label", ev.online ? "Online" : "Offline");
  }
});
