// Mounts a chat panel on every element with data-chat-panel:
//   <div data-chat-panel data-conversation-id="12" data-user-id="3"></div>
//   <script type="module" src="/static/chat/autopanel.js"></script>
// (plus <link rel="stylesheet" href="/static/css/chat.css"> and the csrf-token meta tag).
import { mountChat } from "/static/chat/panel.js";

for (const el of document.querySelectorAll("[data-chat-panel]")) {
  el.chatPanel = mountChat(el, {
    conversationId: el.dataset.conversationId,
    userId: el.dataset.userId,
  });
}
