// Camera and microphone: acquisition with clear messages, device lists, screen capture.

export const VIDEO_CONSTRAINTS = { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30 } };
export const AUDIO_CONSTRAINTS = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };

const NAMES = { audio: "microphone", video: "camera", both: "camera and microphone" };

/** A sentence a person can act on, for a getUserMedia failure. */
export function describeError(err, what) {
  const device = NAMES[what] || "device";
  const name = err && err.name;
  if (name === "NotAllowedError" || name === "SecurityError" || name === "PermissionDeniedError") {
    return `Access to your ${device} is blocked. Allow it from the camera icon in the address bar, or join without it.`;
  }
  if (name === "NotFoundError" || name === "DevicesNotFoundError" || name === "OverconstrainedError") {
    return `No ${device} was found. Plug one in and pick it above, or join without it.`;
  }
  if (name === "NotReadableError" || name === "TrackStartError" || name === "AbortError") {
    return `Your ${device} is in use by another application. Close it and try again, or join without it.`;
  }
  return `Your ${device} could not be started (${name || "unknown error"}).`;
}

function videoConstraints(deviceId) {
  return deviceId ? { ...VIDEO_CONSTRAINTS, deviceId: { exact: deviceId } } : { ...VIDEO_CONSTRAINTS };
}

function audioConstraints(deviceId) {
  return deviceId ? { ...AUDIO_CONSTRAINTS, deviceId: { exact: deviceId } } : { ...AUDIO_CONSTRAINTS };
}

/** True when this browser can capture media at all (secure context with mediaDevices). */
export function canCapture() {
  return Boolean(navigator.mediaDevices && navigator.mediaDevices.getUserMedia);
}

/**
 * Get camera and microphone, falling back to whichever works.
 * Resolves to {audio: MediaStreamTrack|null, video: MediaStreamTrack|null, problems: string[]}.
 */
export async function acquire({ cameraId = "", micId = "", audio = true, video = true } = {}) {
  const out = { audio: null, video: null, problems: [] };
  if (!canCapture()) {
    out.problems.push("This browser cannot use a camera or microphone here (a secure https page is needed). You can still watch and listen.");
    return out;
  }
  if (!audio && !video) return out;
  try {
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: audio ? audioConstraints(micId) : false,
      video: video ? videoConstraints(cameraId) : false,
    });
    out.audio = stream.getAudioTracks()[0] || null;
    out.video = stream.getVideoTracks()[0] || null;
    return out;
  } catch (err) {
    if (!(audio && video)) {
      out.problems.push(describeError(err, audio ? "audio" : "video"));
      return out;
    }
  }
  // Together failed: try each alone so one broken device does not cost the other.
  for (const kind of ["video", "audio"]) {
    try {
      const stream = await navigator.mediaDevices.getUserMedia(
        kind === "video" ? { video: videoConstraints(cameraId) } : { audio: audioConstraints(micId) });
      out[kind] = stream.getTracks()[0] || null;
    } catch (err) {
      out.problems.push(describeError(err, kind));
    }
  }
  return out;
}

/** Cameras and microphones, as {videoinput: [...], audioinput: [...]}. */
export async function listDevices() {
  const result = { videoinput: [], audioinput: [] };
  if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return result;
  for (const device of await navigator.mediaDevices.enumerateDevices()) {
    if (device.kind in result && device.deviceId) result[device.kind].push(device);
  }
  return result;
}

/** A screen, window or tab chosen by the user; null when they cancel. */
export async function captureScreen() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getDisplayMedia) {
    throw new Error("Screen sharing is not supported by this browser.");
  }
  try {
    const stream = await navigator.mediaDevices.getDisplayMedia({
      video: { frameRate: { ideal: 15 }, width: { max: 1920 }, height: { max: 1080 } },
      audio: false,
    });
    const track = stream.getVideoTracks()[0];
    if (track && "contentHint" in track) track.contentHint = "detail";
    return track || null;
  } catch (err) {
    if (err && err.name === "NotAllowedError") return null;
    throw err;
  }
}
