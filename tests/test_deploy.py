"""The files a newcomer and an operator rely on say what the code does."""

from __future__ import annotations

import configparser
import json
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, LiveServer

README = (ROOT / "README.md").read_text()
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_readme_documents_every_setting() -> None:
    used: set[str] = set()
    for path in (ROOT / "panda").rglob("*.py"):
        used |= set(re.findall(r"\bPANDA_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    assert {"PANDA_DATA_DIR", "PANDA_SECRET_KEY", "PANDA_DATABASE_URL"} <= used
    undocumented = sorted(v for v in used if f"`{v}`" not in README)
    assert undocumented == [], f"add these to the table in README.md: {undocumented}"


def test_readme_starts_with_the_two_commands() -> None:
    run, test, production = (README.index(s) for s in ("make run", "make test", "## Production"))
    assert run < test < production
    for topic in ("PostgreSQL", "Redis", "nginx", "docker run", "--restart unless-stopped"):
        assert topic in README
    assert "systemctl enable --now panda" in README


def test_ci_runs_make_test_and_nothing_else() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    commands = [
        line
        for line in script.splitlines()
        if line.strip() and not line.startswith(("#", "set ", "cd "))
    ]
    assert commands == ["exec make test"]


def _make_dry_run(target: str) -> str:
    out = subprocess.run(
        ["make", "-n", "-B", target, "VENV=/nonexistent-venv"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout


def test_make_run_migrates_offers_demo_and_serves() -> None:
    steps = _make_dry_run("run")
    order = [
        steps.index("ensure-venv.sh"),
        steps.index("install --quiet -e ."),
        steps.index("panda migrate"),
        steps.index("panda demo --if-empty"),
        steps.index("panda serve"),
    ]
    assert order == sorted(order)


def test_make_test_installs_then_runs_under_a_hard_timeout() -> None:
    steps = _make_dry_run("test")
    assert steps.index("install-test-deps.sh") < steps.index("install --quiet -e '.[dev]'")
    assert re.search(r"timeout -s ABRT .* -m pytest", steps)


def test_dockerfile_mirrors_the_tested_install() -> None:
    instructions = _dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    runs = " ".join(arg for word, arg in instructions if word == "RUN")
    assert "make install" in runs  # the same steps `make run` and CI take
    users = [arg for word, arg in instructions if word == "USER"]
    assert users and users[-1] not in {"root", "0"}
    assert ("CMD", '["panda", "serve"]') in instructions
    healthchecks = [arg for word, arg in instructions if word == "HEALTHCHECK"]
    assert len(healthchecks) == 1 and "/healthz" in healthchecks[0]


def _healthcheck_command() -> list[str]:
    (arg,) = [arg for word, arg in _dockerfile_instructions() if word == "HEALTHCHECK"]
    exec_form = arg[arg.index("CMD") + 3 :].strip()
    command = json.loads(exec_form)
    assert command[0] == "python"
    return [sys.executable, *command[1:]]


def test_docker_healthcheck_passes_on_a_live_server(live_server: LiveServer) -> None:
    ok = subprocess.run(
        _healthcheck_command(),
        env={"PANDA_PORT": str(live_server.port)},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr


def test_docker_healthcheck_fails_when_nothing_answers() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: refused
        down = subprocess.run(
            _healthcheck_command(),
            env={"PANDA_PORT": str(port)},
            capture_output=True,
            timeout=30,
            check=False,
        )
    assert down.returncode != 0


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "var"} <= set(ignored)


def test_systemd_unit_restarts_and_starts_at_boot() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((ROOT / "deploy" / "panda.service").read_text())
    service = unit["Service"]
    assert service["Restart"] == "always"
    assert service["EnvironmentFile"].startswith("/etc/panda/")
    assert shlex.split(service["ExecStart"])[-1] == "serve"
    assert shlex.split(service["ExecStart"])[0].endswith("/panda")
    assert service["User"] not in {"root", "0"}
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_nginx_example_upgrades_websockets() -> None:
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    ws = conf[conf.index("location /ws/") :]
    ws = ws[: ws.index("}")]
    assert "proxy_set_header Upgrade $http_upgrade" in ws
    assert "proxy_set_header Connection $connection_upgrade" in ws
    assert "proxy_http_version 1.1" in ws
    assert "X-Forwarded-Proto" in conf and "listen 443 ssl" in conf


def test_scripts_are_valid_bash() -> None:
    for script in [*(ROOT / "scripts").glob("*.sh"), ROOT / ".ci" / "run"]:
        out = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert out.returncode == 0, f"{script}: {out.stderr}"


def test_apt_helper_without_root_or_sudo_says_what_to_install(tmp_path: Path) -> None:
    """A non-root user without sudo is told the packages instead of getting a cryptic error."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for tool in ("apt-get", "id"):
        (fake_bin / tool).write_text('#!/bin/sh\n[ "$1" = -u ] && echo 1000\nexit 0\n')
        (fake_bin / tool).chmod(0o755)
    out = subprocess.run(
        ["/bin/bash", str(ROOT / "scripts" / "apt-install.sh"), "redis-server", "chromium"],
        env={"PATH": f"{fake_bin}:/nonexistent"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 1
    assert "redis-server chromium" in out.stderr
