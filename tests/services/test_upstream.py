"""The upstream connection pool (bridge.services.upstream) against real sockets on loopback.

What the gateway relies on: connections are reused, a half-read response closes its
connection (so a cancelled interception stops the provider), a connection the server
closed while idle is never used again, TLS verifies certificates and says why it
failed, and transport failures become :class:`UpstreamUnavailable`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ssl
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bridge.errors import UpstreamUnavailable
from bridge.services.upstream import UpstreamClient

from ..wire import WireServer, serve


def answer(body: bytes, *, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%b\r\n%b" % (len(body), extra, body)


async def test_connections_are_reused_and_requests_carry_host_and_length() -> None:
    server = WireServer(answer(b"ok"))
    async with trio.open_nursery() as nursery:
        port = await serve(nursery, server)
        client = UpstreamClient()
        for _ in range(3):
            async with client.open("POST", f"http://127.0.0.1:{port}/v1/x?a=1", [], b"{}") as r:
                assert (r.status, await r.read()) == (200, b"ok")
        await client.aclose()
        nursery.cancel_scope.cancel()
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /v1/x?a=1 HTTP/1.1\r\n")
    assert f"host: 127.0.0.1:{port}\r\n".encode() in first
    assert b"content-length: 2\r\n" in first
    assert first.endswith(b"{}")


async def test_a_half_read_response_closes_its_connection() -> None:
    server = WireServer(answer(b"x" * 1_000_000))
    async with trio.open_nursery() as nursery:
        port = await serve(nursery, server)
        client = UpstreamClient()
        response = await client.send("POST", f"http://127.0.0.1:{port}/", [], b"")
        chunks = response.chunks()
        assert await anext(chunks)
        await chunks.aclose()
        await response.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert server.open == 0  # the server saw the close: the provider stops
        async with client.open("POST", f"http://127.0.0.1:{port}/", [], b"") as again:
            assert len(await again.read()) == 1_000_000
        assert server.connections == 2
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_an_idle_connection_the_server_closed_is_not_used_again() -> None:
    server = WireServer(answer(b"ok"))
    server.close_after_answer = True
    async with trio.open_nursery() as nursery:
        port = await serve(nursery, server)
        client = UpstreamClient()
        for _ in range(2):
            async with client.open("GET", f"http://127.0.0.1:{port}/", [], b"") as r:
                await trio.testing.wait_all_tasks_blocked()
                assert await r.read() == b"ok"
        assert server.connections == 2
        await trio.testing.wait_all_tasks_blocked()
        await client.prune()  # what keep_tidy does every second
        assert client._idle[(b"http", b"127.0.0.1", port)] == []
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_a_refused_connection_is_unavailable_with_the_reason() -> None:
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: connections are refused
        client = UpstreamClient()
        with pytest.raises(UpstreamUnavailable, match=r"upstream unreachable: .+"):
            await client.send("POST", f"http://127.0.0.1:{port}/", [], b"")
        await client.aclose()


def _certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for ``localhost``: (certificate, key) PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_tls_verifies_the_certificate_and_says_why_it_refused(tmp_path: Path) -> None:
    cert, key = _certificate(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    server = WireServer(answer(b"secure"))

    async def handle(stream: trio.abc.Stream) -> None:
        with contextlib.suppress(trio.BrokenResourceError):  # a refused handshake
            await server.handle(stream)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_ssl_over_tcp, handle, 0, server_context)
        port = listeners[0].transport_listener.socket.getsockname()[1]
        url = f"https://localhost:{port}/v1/messages"

        default = UpstreamClient()
        with pytest.raises(UpstreamUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
            await default.send("POST", url, [], b"{}")
        await default.aclose()

        trusting = UpstreamClient(ssl_context=ssl.create_default_context(cafile=str(cert)))
        async with trusting.open("POST", url, [("x-test", "1")], b"{}") as response:
            assert (response.status, await response.read()) == (200, b"secure")
        await trusting.aclose()
        nursery.cancel_scope.cancel()
    assert b"host: localhost:%d\r\n" % port in server.requests[0]
