"""Which address counts as the client's behind zero, one or several reverse proxies."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from panda import keys
from panda.config import ConfigError, Settings
from panda.web.accounts import client_ip


def _client_ip(data_dir: Path, peer: str, forwarded: str | None, proxies: str = "") -> str:
    app = web.Application()
    app[keys.settings] = Settings.from_env(
        {"PANDA_DATA_DIR": str(data_dir), "PANDA_TRUSTED_PROXIES": proxies}
    )
    headers = {"X-Forwarded-For": forwarded} if forwarded is not None else {}
    transport_peer = (peer, 40000)

    class Transport:
        def get_extra_info(self, name: str, default: object = None) -> object:
            return transport_peer if name == "peername" else default

        def is_closing(self) -> bool:
            return False

    request = make_mocked_request("GET", "/", headers=headers, app=app, transport=Transport())
    return client_ip(request)


@pytest.mark.parametrize(
    ("peer", "forwarded", "proxies", "expected"),
    [
        # No proxy: the header is the client's own words and is ignored.
        ("203.0.113.5", "1.2.3.4", "", "203.0.113.5"),
        # A proxy on this machine: its entry (the last) names the client; forged ones are ignored.
        ("127.0.0.1", "9.9.9.9, 203.0.113.9", "", "203.0.113.9"),
        ("::1", "2001:db8::7", "", "2001:db8::7"),
        ("127.0.0.1", None, "", "127.0.0.1"),
        ("127.0.0.1", "not-an-address", "", "127.0.0.1"),
        # A load balancer in front of the local proxy, trusted by network.
        ("127.0.0.1", "9.9.9.9, 198.51.100.20, 10.0.0.3", "127.0.0.1,10.0.0.0/8", "198.51.100.20"),
        # The same chain when only the local proxy is trusted: the balancer counts as the client.
        ("127.0.0.1", "9.9.9.9, 198.51.100.20, 10.0.0.3", "", "10.0.0.3"),
        # A proxy on another host, named explicitly; loopback is no longer trusted then.
        ("10.1.2.3", "198.51.100.1", "10.1.2.3", "198.51.100.1"),
        ("127.0.0.1", "198.51.100.1", "10.1.2.3", "127.0.0.1"),
    ],
)
def test_client_ip_walks_trusted_hops(
    tmp_path: Path, peer: str, forwarded: str | None, proxies: str, expected: str
) -> None:
    assert _client_ip(tmp_path, peer, forwarded, proxies) == expected


def test_trusted_proxies_setting_is_validated(tmp_path: Path) -> None:
    env = {"PANDA_DATA_DIR": str(tmp_path)}
    with pytest.raises(ConfigError, match="PANDA_TRUSTED_PROXIES"):
        Settings.from_env({**env, "PANDA_TRUSTED_PROXIES": "10.0.0.0/8, proxy.example"})
    settings = Settings.from_env({**env, "PANDA_TRUSTED_PROXIES": " 10.0.0.0/8 , 192.0.2.1 "})
    assert [str(n) for n in settings.trusted_proxies] == ["10.0.0.0/8", "192.0.2.1/32"]
