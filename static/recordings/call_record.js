// The call page's record button and recording indicator. The call page forwards the server's
// {"type": "recording", ...} signalling messages as a "panda:recording" event on document.
const call = document.getElementById("call");
const button = document.querySelector('[data-action="record"]');
const indicator = document.querySelector("[data-recording-indicator]");
const csrf = document.querySelector('meta[name="csrf-token"]')?.content || "";

function announce(text) {
  const list = document.querySelector("[data-toasts]");
  if (!list) return;
  const item = document.createElement("li");
  item.textContent = text;
  list.append(item);
  setTimeout(() => item.remove(), 6000);
}

function show(active) {
  if (indicator) indicator.hidden = !active;
  if (button) {
    button.setAttribute("aria-pressed", active ? "true" : "false");
    const label = button.querySelector("[data-label]");
    if (label) label.textContent = active ? "Stop recording" : "Record";
  }
}

button?.addEventListener("click", async () => {
  const active = button.getAttribute("aria-pressed") === "true";
  button.disabled = true;
  try {
    const response = await fetch(`/api/sessions/${call.dataset.sessionId}/recording`, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify({ action: active ? "stop" : "start" }),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) announce(body.error || "The recording could not be changed.");
    else show(body.recording);
  } catch {
    announce("The recording could not be changed.");
  } finally {
    button.disabled = false;
  }
});

document.addEventListener("panda:recording", (event) => {
  const message = event.detail || {};
  if (message.state === "started") {
    show(true);
    announce(message.by ? `${message.by} started recording this session.` : "Recording started.");
  } else {
    show(false);
    announce(message.message || "Recording stopped.");
  }
});
