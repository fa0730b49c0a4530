"""Settings read from environment variables, validated once at start."""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be 1/0, true/false, yes/no or on/off, not {raw!r}")


def _int(env: Mapping[str, str], name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be between {lo} and {hi}, not {value}")
    return value


def _port_range(env: Mapping[str, str], name: str) -> tuple[int, int] | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        lo_s, hi_s = raw.split("-", 1)
        lo, hi = int(lo_s), int(hi_s)
    except ValueError:
        raise ConfigError(f"{name} must look like 50000-50199, not {raw!r}") from None
    if not (1024 <= lo <= hi <= 65535):
        raise ConfigError(f"{name} must be an ascending range within 1024-65535, not {raw!r}")
    return lo, hi


def _ice_servers(env: Mapping[str, str], name: str) -> tuple[dict[str, Any], ...]:
    raw = env.get(name, "").strip()
    if not raw:
        return ()
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{name} must be a JSON list of ICE servers: {exc}") from None
    if not isinstance(value, list) or not all(
        isinstance(s, dict) and isinstance(s.get("urls"), str | list) for s in value
    ):
        raise ConfigError(f'{name} must be a JSON list like [{{"urls": "stun:host:3478"}}]')
    return tuple(value)


def _secret_key(env: Mapping[str, str], data_dir: Path, production: bool) -> str:
    key = env.get("PANDA_SECRET_KEY", "").strip()
    if key:
        if len(key) < 32:
            raise ConfigError("PANDA_SECRET_KEY must be at least 32 characters long")
        return key
    if production:
        raise ConfigError("PANDA_SECRET_KEY is required when PANDA_ENV=production")
    # Development: one random key kept in the data directory, readable by the owner only.
    path = data_dir / "secret_key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        # Made by an earlier start (or by another worker process starting at the same moment).
        return _read_secret_file(path)
    except OSError as exc:
        raise ConfigError(f"PANDA_DATA_DIR: cannot create {path}: {exc.strerror}") from None
    key = secrets.token_urlsafe(48)
    with os.fdopen(fd, "w") as fh:
        fh.write(key)
    return key


def _read_secret_file(path: Path) -> str:
    for _ in range(50):
        try:
            key = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"PANDA_DATA_DIR: cannot read {path}: {exc.strerror}") from None
        if len(key) >= 32:
            if path.stat().st_mode & 0o077:
                path.chmod(0o600)  # a copied data directory may have loosened it
            return key
        # Another process may have created the file an instant ago and not written it yet.
        time.sleep(0.01)
    raise ConfigError(
        f"PANDA_DATA_DIR: {path} holds no usable secret key; delete it to generate a new one "
        "or set PANDA_SECRET_KEY"
    )


def _database_url(env: Mapping[str, str], data_dir: Path) -> str:
    raw = env.get("PANDA_DATABASE_URL", "").strip()
    if not raw:
        return f"sqlite+aiosqlite:///{data_dir / 'panda.sqlite3'}"
    scheme, sep, rest = raw.partition("://")
    if not sep or not rest:
        raise ConfigError(f"PANDA_DATABASE_URL must be a database URL, not {raw!r}")
    # Accept the usual spellings and use the async drivers we ship.
    drivers = {
        "postgres": "postgresql+asyncpg",
        "postgresql": "postgresql+asyncpg",
        "postgresql+asyncpg": "postgresql+asyncpg",
        "sqlite": "sqlite+aiosqlite",
        "sqlite+aiosqlite": "sqlite+aiosqlite",
    }
    driver = drivers.get(scheme.lower())
    if driver is None:
        raise ConfigError(
            "PANDA_DATABASE_URL must start with postgresql:// (or postgresql+asyncpg://) or "
            f"sqlite:// (or sqlite+aiosqlite://), not {scheme}://"
        )
    return f"{driver}://{rest}"


def _redis_url(env: Mapping[str, str]) -> str | None:
    raw = env.get("PANDA_REDIS_URL", "").strip()
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in {"redis", "rediss", "unix"}:
        raise ConfigError(
            f"PANDA_REDIS_URL must start with redis://, rediss:// or unix://, not {raw!r}"
        )
    return raw


def _node_url(env: Mapping[str, str]) -> str | None:
    raw = env.get("PANDA_NODE_URL", "").strip().rstrip("/")
    if not raw:
        return None
    parts = urlsplit(raw)
    try:
        valid_port = parts.port is None or parts.port > 0
    except ValueError:
        valid_port = False
    if (
        parts.scheme not in {"http", "https"}
        or not parts.hostname
        or not valid_port
        or parts.path
        or parts.query
    ):
        raise ConfigError(
            "PANDA_NODE_URL must be an http(s) address without a path, like "
            f"https://tutor.example.org:8443, not {raw!r}"
        )
    return raw


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# A reverse proxy on the same machine is trusted to say who the client is; nothing else is.
DEFAULT_TRUSTED_PROXIES: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


def _networks(
    env: Mapping[str, str], name: str, default: tuple[IPNetwork, ...]
) -> tuple[IPNetwork, ...]:
    """Comma-separated addresses or CIDR networks; empty means the default."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    networks = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(
                f"{name} must list IP addresses or networks (10.0.0.0/8), not {item!r}"
            ) from None
    return tuple(networks)


@dataclass(frozen=True)
class Settings:
    """Everything the server is configured with; build it with `Settings.from_env()`."""

    data_dir: Path
    database_url: str
    secret_key: str = field(repr=False)
    base_url: str = "http://127.0.0.1:8080"
    host: str = "127.0.0.1"
    port: int = 8080
    env: str = "development"
    debug: bool = False
    redis_url: str | None = None
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_user: str | None = None
    smtp_password: str | None = field(default=None, repr=False)
    smtp_starttls: bool = True
    mail_from: str = "Panda Professor <no-reply@localhost>"
    mail_outbox: Path | None = None
    ice_loopback: bool = False
    ice_servers: tuple[dict[str, Any], ...] = ()
    ice_tcp_port: int | None = None
    ice_tcp_advertised_port: int | None = None
    ice_public_ip: str | None = None
    ice_udp_ports: tuple[int, int] | None = None
    relay_path: str = "frame"
    trusted_proxies: tuple[IPNetwork, ...] = DEFAULT_TRUSTED_PROXIES
    workers: int = 1
    worker_index: int = 0
    # PANDA_NODE_URL as configured (worker 0's direct address); see `node_url`.
    node_url_base: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def production(self) -> bool:
        """True when running with PANDA_ENV=production."""
        return self.env == "production"

    @property
    def node_url(self) -> str:
        """This process's own address, as browsers reach it directly (call redirects).

        PANDA_NODE_URL names worker 0; worker i is at its port + i. Without it: the host of
        PANDA_BASE_URL on this process's own port.
        """
        parts = urlsplit(self.node_url_base or self.base_url)
        host = parts.hostname or self.host
        if ":" in host:
            host = f"[{host}]"
        if self.node_url_base:
            port = (parts.port or (443 if parts.scheme == "https" else 80)) + self.worker_index
        else:
            port = self.port
        return f"{parts.scheme}://{host}:{port}"

    @property
    def secure_cookies(self) -> bool:
        """Cookies get the Secure flag when the public address is https."""
        return self.base_url.startswith("https://")

    @property
    def outbox_dir(self) -> Path:
        """Where mail is written as .eml files when no SMTP host is configured."""
        return self.mail_outbox or self.data_dir / "outbox"

    @property
    def recordings_dir(self) -> Path:
        """Where call recordings are written (never under a static path)."""
        return self.data_dir / "recordings"

    @property
    def uploads_dir(self) -> Path:
        """Where processed user uploads (profile photos) live."""
        return self.data_dir / "uploads"

    def with_(self, **changes: Any) -> Settings:
        """A copy with some fields changed (tests)."""
        return replace(self, **changes)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and validate every PANDA_* variable; raise ConfigError naming the bad one."""
        env = os.environ if env is None else env
        app_env = env.get("PANDA_ENV", "development").strip() or "development"
        if app_env not in {"development", "production"}:
            raise ConfigError(f"PANDA_ENV must be development or production, not {app_env!r}")
        production = app_env == "production"
        data_dir = Path(env.get("PANDA_DATA_DIR", "").strip() or "var").expanduser().resolve()
        if data_dir.exists() and not data_dir.is_dir():
            raise ConfigError(f"PANDA_DATA_DIR must be a directory; {data_dir} is a file")
        database_url = _database_url(env, data_dir)
        host = env.get("PANDA_HOST", "").strip() or "127.0.0.1"
        port = _int(env, "PANDA_PORT", 8080, 1, 65535)
        assert port is not None
        base_url = (env.get("PANDA_BASE_URL", "").strip() or f"http://{host}:{port}").rstrip("/")
        parts = urlsplit(base_url)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ConfigError(f"PANDA_BASE_URL must be an http(s) URL, not {base_url!r}")
        outbox = env.get("PANDA_MAIL_OUTBOX", "").strip()
        relay_path = env.get("PANDA_RELAY_PATH", "").strip() or "frame"
        if relay_path not in {"frame", "packet"}:
            raise ConfigError(f"PANDA_RELAY_PATH must be frame or packet, not {relay_path!r}")
        public_ip = env.get("PANDA_ICE_PUBLIC_IP", "").strip() or None
        if public_ip is not None:
            try:
                ipaddress.ip_address(public_ip)
            except ValueError:
                raise ConfigError(
                    f"PANDA_ICE_PUBLIC_IP must be an IP address, not {public_ip!r}"
                ) from None
        ice_tcp_port = _int(env, "PANDA_ICE_TCP_PORT", None, 1, 65535)
        advertised = _int(env, "PANDA_ICE_TCP_ADVERTISED_PORT", None, 1, 65535)
        if advertised is not None and ice_tcp_port is None:
            raise ConfigError(
                "PANDA_ICE_TCP_ADVERTISED_PORT is the port a TCP proxy forwards to "
                "PANDA_ICE_TCP_PORT: set PANDA_ICE_TCP_PORT too"
            )
        # Everything is validated before anything is written to disk.
        values: dict[str, Any] = {
            "base_url": base_url,
            "host": host,
            "port": port,
            "env": app_env,
            "debug": _bool(env, "PANDA_DEBUG", False),
            "redis_url": _redis_url(env),
            "smtp_host": env.get("PANDA_SMTP_HOST", "").strip() or None,
            "smtp_port": _int(env, "PANDA_SMTP_PORT", 587, 1, 65535) or 587,
            "smtp_user": env.get("PANDA_SMTP_USER", "").strip() or None,
            "smtp_password": env.get("PANDA_SMTP_PASSWORD") or None,
            "smtp_starttls": _bool(env, "PANDA_SMTP_STARTTLS", True),
            "mail_from": env.get("PANDA_MAIL_FROM", "").strip()
            or "Panda Professor <no-reply@localhost>",
            "mail_outbox": Path(outbox).expanduser().resolve() if outbox else None,
            "ice_loopback": _bool(env, "PANDA_ICE_LOOPBACK", False),
            "ice_servers": _ice_servers(env, "PANDA_ICE_SERVERS"),
            "ice_tcp_port": ice_tcp_port,
            "ice_tcp_advertised_port": advertised,
            "ice_public_ip": public_ip,
            "ice_udp_ports": _port_range(env, "PANDA_ICE_UDP_PORTS"),
            "relay_path": relay_path,
            "trusted_proxies": _networks(env, "PANDA_TRUSTED_PROXIES", DEFAULT_TRUSTED_PROXIES),
            "workers": _int(env, "PANDA_WORKERS", 1, 1, 64) or 1,
            "node_url_base": _node_url(env),
        }
        node_host = urlsplit(values["node_url_base"] or base_url).hostname
        if node_host != parts.hostname:
            # The login cookie is bound to the host name: a call page could not follow.
            raise ConfigError(
                f"PANDA_NODE_URL must use the host name of PANDA_BASE_URL ({parts.hostname})"
            )
        if production and not env.get("PANDA_SECRET_KEY", "").strip():
            raise ConfigError("PANDA_SECRET_KEY is required when PANDA_ENV=production")
        try:
            # Private when we create it: it holds the database, the secret and recordings.
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"PANDA_DATA_DIR: cannot create {data_dir}: {exc.strerror}") from None
        return cls(
            data_dir=data_dir,
            database_url=database_url,
            secret_key=_secret_key(env, data_dir, production),
            **values,
        )
