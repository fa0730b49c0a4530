"""Janus baseline of the relay benchmark: Debian's ``janus`` videoroom, driven by the same clients.

Janus never gathers ICE candidates on loopback interfaces, so on a plain host it would put
media on the real network. It runs instead in a network namespace this module creates
(``ip netns``), holding only ``lo`` and a veth pair with a test address (192.0.2.1,
TEST-NET-1: never routed); Janus' ICE is enforced to that interface, no STUN, only the
videoroom plugin and the WebSockets transport (on the namespace's 127.0.0.1) are loaded.
The load generator (``bench/janus_load.py``) runs in the same namespace. Both are pinned
to the same cores as panda's server and generator, and measured by ``relay.measure_point``.
Needs root (network namespaces) and ``apt-get install janus``.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.common import pin

ROOT = Path(__file__).resolve().parents[1]
INSTALL_HINT = "apt-get install janus"
ADDRESS = "192.0.2.1"
INTERFACE = "pbench0"
PEER_INTERFACE = "pbench1"
WS_PORT = 8188
READY_LINE = "JANUS WebSockets transport plugin initialized"
LIB_GLOB = "/usr/lib/*/janus"
NICE = 0  # added to the niceness of Janus and its generator (bench/relay.py --nice)

Measure = Callable[[int, "subprocess.Popen[str]", int, float, float, "int | None", "int | None"],
                   dict[str, Any]]
ReadRss = Callable[[int], float]


def find_libraries(lib_glob: str = LIB_GLOB) -> tuple[Path, Path] | None:
    """(videoroom plugin, WebSockets transport) shared objects of the installed Janus."""
    for lib in sorted(glob.glob(lib_glob)):
        plugin = Path(lib, "plugins", "libjanus_videoroom.so")
        transport = Path(lib, "transports", "libjanus_websockets.so")
        if plugin.exists() and transport.exists():
            return plugin, transport
    return None


def unavailable_reason() -> str | None:
    """Why the Janus baseline cannot run here, or None when it can."""
    if shutil.which("janus") is None:
        return f"janus not installed ({INSTALL_HINT}): not measured"
    if find_libraries() is None:
        return (f"janus installed without its videoroom plugin or WebSockets transport "
                f"({INSTALL_HINT}): not measured")
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is missing: no network namespace, janus not measured"
    if os.geteuid() != 0:
        return ("janus needs a private network namespace (it never uses loopback) and making "
                "one needs root: run the benchmark as root; janus not measured")
    return None


def config_files(folder: Path, interface: str = INTERFACE, port: int = WS_PORT,
                 debug_level: int = 4) -> dict[str, str]:
    """Janus' configuration files (name -> text) for a run whose files live in ``folder``.

    Plugins and transports are loaded from sub-folders holding only the videoroom plugin and
    the WebSockets transport; ICE gathers on ``interface`` only, with no STUN server.
    """
    janus = f"""general: {{
  configs_folder = "{folder}"
  plugins_folder = "{folder / 'plugins'}"
  transports_folder = "{folder / 'transports'}"
  events_folder = "{folder / 'none'}"
  loggers_folder = "{folder / 'none'}"
  debug_level = {debug_level}
  session_timeout = 0
}}
media: {{
  ipv6 = false
}}
nat: {{
  ice_enforce_list = "{interface}"
  full_trickle = false
}}
"""
    websockets = f"""general: {{
  json = "plain"
  ws = true
  ws_port = {port}
  ws_ip = "127.0.0.1"
  wss = false
}}
admin: {{
  admin_ws = false
  admin_wss = false
}}
"""
    return {"janus.jcfg": janus, "janus.transport.websockets.jcfg": websockets,
            "janus.plugin.videoroom.jcfg": "general: {\n}\n"}


def write_config(folder: Path, libraries: tuple[Path, Path] | None = None) -> Path:
    """Write the configuration and the plugin folders into ``folder``; the main file's path.

    ``libraries``: (videoroom plugin, WebSockets transport), found when not given.
    """
    libraries = libraries or find_libraries()
    if libraries is None:
        raise RuntimeError(f"janus libraries not found ({INSTALL_HINT})")
    plugin, transport = libraries
    for sub, lib in (("plugins", plugin), ("transports", transport), ("none", None)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        if lib is not None:
            (folder / sub / lib.name).symlink_to(lib)
    for name, text in config_files(folder).items():
        (folder / name).write_text(text)
    return folder / "janus.jcfg"


def namespace_commands(name: str, address: str = ADDRESS) -> list[list[str]]:
    """The ``ip`` commands that make namespace ``name``: lo up, a veth pair, a test address."""
    return [
        ["ip", "netns", "add", name],
        ["ip", "-n", name, "link", "set", "lo", "up"],
        ["ip", "-n", name, "link", "add", INTERFACE, "type", "veth", "peer", "name",
         PEER_INTERFACE],
        ["ip", "-n", name, "addr", "add", f"{address}/24", "dev", INTERFACE],
        ["ip", "-n", name, "link", "set", INTERFACE, "up"],
        ["ip", "-n", name, "link", "set", PEER_INTERFACE, "up"],
    ]


@contextmanager
def network_namespace() -> Iterator[str]:
    """A private network namespace for one benchmark run (deleted afterwards); its name."""
    name = f"pandabench{os.getpid()}"
    try:
        for cmd in namespace_commands(name):
            subprocess.run(cmd, check=True, capture_output=True, text=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def in_namespace(name: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run inside namespace ``name`` (``ip netns exec`` execs it: same pid)."""
    return ["ip", "netns", "exec", name, *argv]


def _pin(cpu: int | None) -> Any:
    """preexec_fn of a measured process: pinned to ``cpu``, ``NICE`` added to its niceness."""
    return pin(cpu, NICE)


def wait_ready(log: Path, proc: subprocess.Popen[str], timeout: float = 30) -> None:
    """Wait until Janus' log says its WebSockets transport is up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"janus exited with code {proc.returncode}: "
                               f"{log.read_text()[-2000:] if log.exists() else ''}")
        if log.exists() and READY_LINE in log.read_text():
            return
        time.sleep(0.05)  # polling a log file: there is no event to await
    raise RuntimeError("janus did not start in time")


def run_point(namespace: str, calls: int, seconds: float, profile: str,
              measure: Measure, read_rss: ReadRss) -> dict[str, Any]:
    """A fresh Janus and generator in ``namespace``, one measured window of N calls."""
    cores = sorted(os.sched_getaffinity(0))
    server_cpu, gen_cpu = (cores[0], cores[1]) if len(cores) >= 2 else (None, None)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with tempfile.TemporaryDirectory(prefix="janus-bench-") as tmp:
        folder = Path(tmp)
        config = write_config(folder)
        log = folder / "janus.log"
        srv = subprocess.Popen(
            in_namespace(namespace, ["janus", "-C", str(config), "-F", str(folder),
                                     "-L", str(log), "-N", "-o"]),
            cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            text=True, preexec_fn=_pin(server_cpu))
        gen: subprocess.Popen[str] | None = None
        try:
            wait_ready(log, srv)
            time.sleep(0.5)
            rss_idle = read_rss(srv.pid)
            gen = subprocess.Popen(
                in_namespace(namespace, [
                    sys.executable, str(ROOT / "bench" / "janus_load.py"),
                    "--url", f"ws://127.0.0.1:{WS_PORT}/", "--ice-address", ADDRESS,
                    "--calls", str(calls), "--seconds", str(seconds), "--profile", profile]),
                cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, preexec_fn=_pin(gen_cpu))
            point = measure(srv.pid, gen, calls, seconds, rss_idle, server_cpu, gen_cpu)
            errors = [line for line in log.read_text().splitlines() if line.startswith("[ERR]")]
            point["janus_errors"] = len(errors)
            point["janus_error_lines"] = errors[:5]
            return point
        except Exception:
            if log.exists():  # the temporary folder goes away: keep the log's tail
                print(f"janus log tail:\n{log.read_text()[-3000:]}", file=sys.stderr)
            raise
        finally:
            for proc in (gen, srv):
                if proc is not None and proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()


def run_points(calls: Sequence[int], seconds: float, profile: str, measure: Measure,
               read_rss: ReadRss) -> tuple[list[dict[str, Any]] | None, str]:
    """Every point for Janus (None when it cannot run here) and a note saying how or why not.

    ``measure`` and ``read_rss`` are the orchestrator's (``bench/relay.py``), so Janus is
    accounted exactly as panda is.
    """
    reason = unavailable_reason()
    if reason is not None:
        return None, reason
    points = []
    try:
        with network_namespace() as namespace:
            for n in calls:
                try:
                    points.append(run_point(namespace, n, seconds, profile, measure, read_rss))
                except Exception as exc:  # one failed point must not lose the others
                    print(f"janus N={n} failed: {exc}", file=sys.stderr)
    except subprocess.CalledProcessError as exc:
        return None, f"could not make a network namespace for janus ({exc.stderr.strip()})"
    note = (f"janus 1.x videoroom in a private network namespace ({ADDRESS} on a veth, "
            "ICE enforced to it, no STUN), WebSockets API, same clients and cores as panda")
    return points, note
