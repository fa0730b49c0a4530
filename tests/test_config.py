"""Settings.from_env: defaults, every bad value named, secrets handled safely."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from panda.config import ConfigError, Settings

GOOD_SECRET = "s" * 40


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"PANDA_DATA_DIR": str(tmp_path / "data"), **extra}


def test_defaults(tmp_path: Path) -> None:
    settings = Settings.from_env(env_for(tmp_path))
    assert settings.data_dir == (tmp_path / "data").resolve()
    assert settings.data_dir.is_dir()
    assert settings.database_url == f"sqlite+aiosqlite:///{settings.data_dir / 'panda.sqlite3'}"
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.base_url == "http://127.0.0.1:8080"
    assert settings.env == "development" and not settings.production
    assert settings.redis_url is None and settings.smtp_host is None
    assert settings.outbox_dir == settings.data_dir / "outbox"
    assert not settings.secure_cookies
    assert stat.S_IMODE(settings.data_dir.stat().st_mode) == 0o700


def test_data_dir_defaults_to_var_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert Settings.from_env({}).data_dir == tmp_path.resolve() / "var"


def test_values_are_read(tmp_path: Path) -> None:
    settings = Settings.from_env(
        env_for(
            tmp_path,
            PANDA_ENV="production",
            PANDA_SECRET_KEY=GOOD_SECRET,
            PANDA_DATABASE_URL="postgresql://panda:pw@db.internal:5432/panda",
            PANDA_REDIS_URL="redis://127.0.0.1:6379/2",
            PANDA_BASE_URL="https://tutor.example.org/",
            PANDA_HOST="0.0.0.0",
            PANDA_PORT="9000",
            PANDA_SMTP_HOST="smtp.example.org",
            PANDA_SMTP_PORT="465",
            PANDA_SMTP_USER="mailer",
            PANDA_SMTP_PASSWORD="secret",
            PANDA_SMTP_STARTTLS="no",
            PANDA_MAIL_OUTBOX=str(tmp_path / "mails"),
            PANDA_ICE_UDP_PORTS="50000-50199",
            PANDA_ICE_PUBLIC_IP="203.0.113.7",
            PANDA_ICE_SERVERS='[{"urls": "stun:stun.example.org:3478"}]',
            PANDA_WORKERS="4",
        )
    )
    assert settings.production and settings.secret_key == GOOD_SECRET
    assert settings.database_url == "postgresql+asyncpg://panda:pw@db.internal:5432/panda"
    assert settings.redis_url == "redis://127.0.0.1:6379/2"
    assert settings.base_url == "https://tutor.example.org" and settings.secure_cookies
    assert (settings.host, settings.port) == ("0.0.0.0", 9000)
    assert (settings.smtp_host, settings.smtp_port, settings.smtp_user) == (
        "smtp.example.org",
        465,
        "mailer",
    )
    assert settings.smtp_password == "secret" and settings.smtp_starttls is False
    assert settings.outbox_dir == (tmp_path / "mails").resolve()
    assert settings.ice_udp_ports == (50000, 50199)
    assert settings.ice_public_ip == "203.0.113.7"
    assert settings.ice_servers == ({"urls": "stun:stun.example.org:3478"},)
    assert settings.workers == 4
    # Secrets stay out of logs and tracebacks.
    assert GOOD_SECRET not in repr(settings) and "'secret'" not in repr(settings)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("sqlite:////srv/panda.db", "sqlite+aiosqlite:////srv/panda.db"),
    ],
)
def test_database_url_spellings(tmp_path: Path, given: str, expected: str) -> None:
    settings = Settings.from_env(env_for(tmp_path, PANDA_DATABASE_URL=given))
    assert settings.database_url == expected


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PANDA_ENV", "staging"),
        ("PANDA_PORT", "eighty"),
        ("PANDA_PORT", "0"),
        ("PANDA_PORT", "70000"),
        ("PANDA_DATABASE_URL", "mysql://root@localhost/panda"),
        ("PANDA_DATABASE_URL", "not a url"),
        ("PANDA_REDIS_URL", "http://127.0.0.1:6379"),
        ("PANDA_BASE_URL", "ftp://example.org"),
        ("PANDA_BASE_URL", "example.org"),
        ("PANDA_SMTP_PORT", "smtp"),
        ("PANDA_SMTP_STARTTLS", "maybe"),
        ("PANDA_DEBUG", "2"),
        ("PANDA_ICE_LOOPBACK", "yes please"),
        ("PANDA_ICE_SERVERS", "stun:example.org"),
        ("PANDA_ICE_SERVERS", '[{"url": "stun:x"}]'),
        ("PANDA_ICE_UDP_PORTS", "50000"),
        ("PANDA_ICE_UDP_PORTS", "60000-50000"),
        ("PANDA_ICE_TCP_PORT", "-1"),
        ("PANDA_ICE_TCP_ADVERTISED_PORT", "https"),
        ("PANDA_ICE_TCP_ADVERTISED_PORT", "443"),  # without PANDA_ICE_TCP_PORT
        ("PANDA_ICE_PUBLIC_IP", "203.0.113"),
        ("PANDA_ICE_PUBLIC_IP", "my.host.example"),
        ("PANDA_RELAY_PATH", "transcode"),
        ("PANDA_WORKERS", "0"),
        ("PANDA_NODE_URL", "tutor.example.org:8443"),
        ("PANDA_NODE_URL", "https://tutor.example.org:8443/ws"),
        ("PANDA_NODE_URL", "https://tutor.example.org:99999"),
        ("PANDA_NODE_URL", "http://elsewhere.example.org:8080"),
        ("PANDA_SECRET_KEY", "too-short"),
    ],
)
def test_bad_values_fail_naming_the_variable(tmp_path: Path, name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env(env_for(tmp_path, **{name: value}))


def test_ice_tcp_behind_a_proxy_advertises_the_proxy_port(tmp_path: Path) -> None:
    from panda.media.ice_tcp import IceTcpListener

    settings = Settings.from_env(env_for(
        tmp_path, PANDA_ICE_TCP_PORT="3478", PANDA_ICE_TCP_ADVERTISED_PORT="443"))
    assert (settings.ice_tcp_port, settings.ice_tcp_advertised_port) == (3478, 443)
    listener = IceTcpListener.from_settings(settings)
    assert listener is not None and listener.advertised_port == 443
    plain = Settings.from_env(env_for(tmp_path, PANDA_ICE_TCP_PORT="3478"))
    assert plain.ice_tcp_advertised_port is None


def test_nothing_is_written_when_a_value_is_bad(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="PANDA_WORKERS"):
        Settings.from_env(env_for(tmp_path, PANDA_WORKERS="many"))
    assert not (tmp_path / "data").exists()


def test_data_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a directory")
    with pytest.raises(ConfigError, match="PANDA_DATA_DIR"):
        Settings.from_env(env_for(tmp_path))


def test_production_requires_a_secret_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="PANDA_SECRET_KEY is required"):
        Settings.from_env(env_for(tmp_path, PANDA_ENV="production"))
    # And it never falls back to a generated one.
    assert not (tmp_path / "data" / "secret_key").exists()


def test_development_secret_is_generated_private_and_reused(tmp_path: Path) -> None:
    first = Settings.from_env(env_for(tmp_path))
    path = first.data_dir / "secret_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first.secret_key) >= 32
    second = Settings.from_env(env_for(tmp_path))
    assert second.secret_key == first.secret_key
    # Another data directory gets its own key.
    other = Settings.from_env({"PANDA_DATA_DIR": str(tmp_path / "other")})
    assert other.secret_key != first.secret_key


def test_loosened_secret_file_is_tightened(tmp_path: Path) -> None:
    first = Settings.from_env(env_for(tmp_path))
    path = first.data_dir / "secret_key"
    path.chmod(0o644)
    assert Settings.from_env(env_for(tmp_path)).secret_key == first.secret_key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_empty_secret_file_is_an_error_not_a_weak_key(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "secret_key").write_text("\n")
    with pytest.raises(ConfigError, match="no usable secret key"):
        Settings.from_env(env_for(tmp_path))


def test_explicit_secret_key_wins_and_writes_nothing(tmp_path: Path) -> None:
    settings = Settings.from_env(env_for(tmp_path, PANDA_SECRET_KEY=GOOD_SECRET))
    assert settings.secret_key == GOOD_SECRET
    assert not (settings.data_dir / "secret_key").exists()


def test_each_process_has_its_own_address(tmp_path: Path) -> None:
    plain = Settings.from_env(env_for(tmp_path, PANDA_PORT="9000"))
    assert plain.node_url == "http://127.0.0.1:9000"
    behind_proxy = Settings.from_env(
        env_for(tmp_path, PANDA_BASE_URL="https://tutor.example.org", PANDA_PORT="8080")
    )
    # Worker 2 of `panda serve` runs with its own port.
    assert behind_proxy.with_(port=8082, worker_index=2).node_url == (
        "https://tutor.example.org:8082"
    )
    configured = Settings.from_env(
        env_for(
            tmp_path,
            PANDA_BASE_URL="https://tutor.example.org",
            PANDA_NODE_URL="https://tutor.example.org:8443/",
            PANDA_WORKERS="4",
        )
    )
    assert configured.node_url == "https://tutor.example.org:8443"
    assert configured.with_(worker_index=3).node_url == "https://tutor.example.org:8446"
    no_port = Settings.from_env(
        env_for(tmp_path, PANDA_BASE_URL="http://[::1]:8080", PANDA_NODE_URL="https://[::1]")
    )
    assert no_port.node_url == "https://[::1]:443"
