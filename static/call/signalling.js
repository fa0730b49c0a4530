// The signalling websocket: JSON in, JSON out, events for open/message/close.

/** wss:// under https, ws:// otherwise, on this page's own host (a redirect names another process's URL). */
export function socketUrl(path) {
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${window.location.host}${path}`;
}

export class Signalling extends EventTarget {
  constructor(url) {
    super();
    this.url = url;
    this.ws = null;
  }

  /** Open the socket; events: "open", "message" (detail = parsed object), "close" (detail = {code, reason}). */
  connect() {
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.addEventListener("open", () => this.dispatchEvent(new Event("open")));
    ws.addEventListener("message", (event) => {
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch {
        return;
      }
      if (msg && typeof msg.type === "string") {
        this.dispatchEvent(new CustomEvent("message", { detail: msg }));
      }
    });
    ws.addEventListener("close", (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.dispatchEvent(new CustomEvent("close", { detail: { code: event.code, reason: event.reason } }));
    });
  }

  get isOpen() {
    return Boolean(this.ws && this.ws.readyState === WebSocket.OPEN);
  }

  send(msg) {
    if (this.isOpen) this.ws.send(JSON.stringify(msg));
  }

  /** Close without raising a "close" event. */
  close(code = 1000, reason = "bye") {
    const ws = this.ws;
    this.ws = null;
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(code, reason);
  }
}
