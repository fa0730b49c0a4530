"""The documented port-443 layout: nginx `stream` + `ssl_preread` sends TLS to the web server
and everything else to the ICE-TCP listener (run only where nginx and its stream module exist).
"""

from __future__ import annotations

import asyncio
import datetime
import shutil
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aioice
import pytest
from aiohttp import web
from aioice import stun
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from panda.media import ice_tcp
from tests.helpers import free_port
from tests.media.test_ice_tcp import binding_request, frame, read_frame
from tests.media.test_ice_tcp_client import Cfg, connect_pair, make_tcp_only_client

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")

pytestmark = pytest.mark.skipif(
    not (Path(NGINX).exists() and STREAM_MODULE.exists()),
    reason="needs nginx with the stream module (Debian: nginx libnginx-mod-stream)",
)

# The layout of docs/ice-tcp.md, with test ports.
NGINX_CONF = """
load_module {module};
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
daemon off;
worker_processes 1;
events {{ worker_connections 256; }}
stream {{
    map $ssl_preread_protocol $panda_upstream {{
        ""      panda_ice_tcp;
        default panda_https;
    }}
    upstream panda_https   {{ server 127.0.0.1:{web}; }}
    upstream panda_ice_tcp {{ server 127.0.0.1:{ice}; }}
    server {{
        listen 127.0.0.1:{front};
        ssl_preread on;
        proxy_pass $panda_upstream;
        proxy_timeout 60s;
    }}
}}
"""


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@dataclass
class Layout:
    front: int
    listener: ice_tcp.IceTcpListener


@pytest.fixture
async def layout(tmp_path: Path) -> AsyncIterator[Layout]:
    # The web server behind nginx speaks TLS itself (nginx only peeks at the ClientHello).
    cert, key = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    app = web.Application()

    async def home(request: web.Request) -> web.Response:
        return web.Response(text="panda web")

    app.router.add_get("/", home)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    web_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    front = free_port()
    listener = ice_tcp.IceTcpListener(0, host="127.0.0.1", advertised_port=front)
    await listener.start()
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            module=STREAM_MODULE, tmp=tmp_path, web=web_port, ice=listener.port, front=front
        )
    )
    proc = await asyncio.create_subprocess_exec(
        NGINX,
        *("-c", str(conf), "-p", str(tmp_path), "-e", str(tmp_path / "error.log")),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(15):
            while True:  # until nginx accepts connections
                assert proc.returncode is None, (tmp_path / "error.log").read_text()
                try:
                    _, w = await asyncio.open_connection("127.0.0.1", front)
                    w.close()
                    break
                except OSError:
                    await asyncio.sleep(0.05)
        yield Layout(front, listener)
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
        await listener.close()
        await runner.cleanup()


async def test_tls_goes_to_the_web_server(layout: Layout) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", layout.front, ssl=context, server_hostname="localhost"
    )
    writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    body = await asyncio.wait_for(reader.read(), 10)
    assert body.startswith(b"HTTP/1.1 200") and body.endswith(b"panda web")
    writer.close()
    # Had the ClientHello reached the ICE port, it would have been closed as oversized.
    stats = layout.listener.stats
    assert stats.closed_oversized == stats.closed_garbage == stats.authenticated == 0


async def test_ice_tcp_goes_to_the_listener(layout: Layout) -> None:
    connection = aioice.Connection(ice_controlling=False)
    ice_tcp.configure(connection, Cfg(), layout.listener)
    await connection.gather_candidates()
    try:
        tcp = [c for c in connection.local_candidates if c.transport == "tcp"]
        assert [c.port for c in tcp] == [layout.front]  # the proxy's port is advertised
        reader, writer = await asyncio.open_connection("127.0.0.1", layout.front)
        key = connection.local_password.encode()
        writer.write(frame(bytes(binding_request(f"{connection.local_username}:clnt", key))))
        response = stun.parse_message(await read_frame(reader))
        assert response.message_class == stun.Class.RESPONSE
        assert response.check_message_integrity(key)
        writer.close()
    finally:
        await connection.close()


async def test_ice_session_through_the_proxy(layout: Layout) -> None:
    server = aioice.Connection(ice_controlling=False)
    ice_tcp.configure(server, Cfg(), layout.listener)
    client = aioice.Connection(ice_controlling=True)
    make_tcp_only_client(client)
    try:
        await connect_pair(server, client)
        assert ice_tcp.selected_transport(server) == "tcp"
        await client.send(b"\x17through nginx")
        assert await asyncio.wait_for(server.recv(), 5) == b"\x17through nginx"
        await server.send(b"\x17and back")
        assert await asyncio.wait_for(client.recv(), 5) == b"\x17and back"
    finally:
        await client.close()
        await server.close()
