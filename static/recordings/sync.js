// Keeps the participants' recordings of one session in step: each <video> carries the offset
// (seconds from the start of the recording) at which its file begins.
const group = document.querySelector("[data-sync-group]");
if (group) {
  const videos = Array.from(group.querySelectorAll("video"));
  const offsetOf = (v) => Number(v.dataset.offset || 0);
  let leader = null;

  const follow = (source) => {
    const t = offsetOf(source) + source.currentTime;
    for (const v of videos) {
      if (v === source) continue;
      const local = t - offsetOf(v);
      const inside = local >= 0 && (!Number.isFinite(v.duration) || local <= v.duration);
      if (inside && Math.abs(v.currentTime - local) > 0.25) v.currentTime = local;
      if (!source.paused && inside && v.paused) v.play().catch(() => {});
      if ((source.paused || !inside) && !v.paused) v.pause();
    }
  };

  for (const v of videos) {
    for (const type of ["play", "pause", "seeked"]) {
      v.addEventListener(type, () => {
        if (leader && leader !== v) return;
        leader = v;
        follow(v);
        setTimeout(() => { if (leader === v) leader = null; }, 300);
      });
    }
  }
}
