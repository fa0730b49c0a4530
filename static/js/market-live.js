// Refresh the navbar's unread badge as soon as the server pushes a notification event.
import { live } from "/static/js/live.js";

const badge = document.getElementById("nav-notifications-badge");
if (badge) {
  live.on("notification", () => {
    if (window.htmx) window.htmx.trigger(badge, "refresh");
  });
  live.start();
}
