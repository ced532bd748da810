"""The gateway's tests: a real MCP client (the official Python SDK's ClientSession) talks to the
real `allowly-mcp-gateway`, which talks to the real MCP server in server.py, and Allowly is a real
`allowly serve` (crates/allowly-server/tests/it/clients.rs starts it and sets the environment: the
server's URL, a workspace whose rules are mcp.shop.send_email → confirm and
mcp.shop.send_payment → escalate, one key per role, and the gateway's binary).

Each side of the gateway is stdio or streamable HTTP (`Via`): test_gateway.py runs every test
both all-stdio and all-HTTP, test_transports.py the mixed ways once each."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

HERE = Path(__file__).resolve().parent


sys.path.insert(0, str(HERE.parents[3] / "clients" / "python" / "tests"))
from live_server import Env, env  # noqa: E402,F401 - the suites' fixture: the server and its keys

#: The gateway binary under test, built next to `allowly`.
GATEWAY = os.environ.get("ALLOWLY_TEST_GATEWAY_BIN", "allowly-mcp-gateway")


@dataclass(frozen=True)
class Via:
    """How the client reaches the gateway (`front`) and the gateway the server (`back`)."""
    front: str  # "stdio" or "http"
    back: str

    def __str__(self) -> str:
        return f"{self.front}-{self.back}"


STDIO = Via("stdio", "stdio")
HTTP = Via("http", "http")
#: The way `gateway()` connects when not told (the `via` fixture sets it per test).
_current = STDIO


def pytest_generate_tests(metafunc):
    if metafunc.module.__name__ == "test_gateway":
        metafunc.parametrize("via", [STDIO, HTTP], ids=str, indirect=True)


@pytest.fixture(autouse=True)
def via(request):
    global _current
    _current = getattr(request, "param", STDIO)
    yield _current
    _current = STDIO


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, deadline_s: float = 60.0) -> None:
    """Until something accepts connections on `port` (the process's own start-up, polled)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        assert proc.poll() is None, f"the process exited with {proc.returncode}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port}")


@contextmanager
def stopped_at_exit(proc: subprocess.Popen):
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def http_server(tool_log: Path, *options: str, port: int | None = None):
    """server.py over streamable HTTP on a port of its own (or `port`); yields (its /mcp URL, the
    process). With `--tls CERT KEY` among the options the URL is https://."""
    port = port or free_port()
    proc = subprocess.Popen([sys.executable, str(HERE / "server.py"), "--http", str(port), *options],
                            env={**os.environ, "TOOL_LOG": str(tool_log)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with stopped_at_exit(proc):
        wait_listening(port, proc)
        scheme = "https" if "--tls" in options else "http"
        yield f"{scheme}://127.0.0.1:{port}/mcp", proc


@dataclass(frozen=True)
class Pki:
    """A private CA, a server certificate it signed (for 127.0.0.1), and another CA that signed
    nothing the server has: PEM files."""
    ca: Path
    cert: Path
    key: Path
    other_ca: Path


def make_pki(directory: Path) -> Pki:
    """Generated with `cryptography` (scripts/setup.sh installs it): no certificate is committed."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def build(subject: str, key, issuer_name: str, issuer_key, ca: bool):
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
                decipher_only=False), critical=True)
        else:
            builder = (builder
                       .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                                   x509.DNSName("localhost")]), critical=False)
                       .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
        return builder.sign(issuer_key, hashes.SHA256())

    def write(path: Path, cert) -> Path:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    ca_key, other_key, server_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    key = directory / "server.key"
    key.write_bytes(server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    return Pki(ca=write(directory / "ca.pem", build("test CA", ca_key, "test CA", ca_key, True)),
               cert=write(directory / "server.pem", build("127.0.0.1", server_key, "test CA", ca_key, False)),
               key=key,
               other_ca=write(directory / "other-ca.pem", build("other CA", other_key, "other CA", other_key, True)))


def server_command(tool_log: Path, *options: str) -> list[str]:
    """server.py over stdio, as a command the gateway starts."""
    return [sys.executable, str(HERE / "server.py"), "--log", str(tool_log), *options]


def gateway_env(env: Env, keys: tuple[str, ...], **extra: str) -> dict[str, str]:
    variables = {"PATH": os.environ.get("PATH", ""), **extra}
    for role, var, secret in (("check", "ALLOWLY_CHECK_KEY", env.checker), ("read", "ALLOWLY_READ_KEY", env.reader),
                              ("answer", "ALLOWLY_ANSWER_KEY", env.admin)):
        if role in keys:
            variables[var] = secret
    return variables


@contextmanager
def listening(args: list[str], variables: dict[str, str], port: int = 0):
    """The gateway started with `args` and an HTTP front (`--listen` on `port`, by default one it
    chooses, read from the line it prints); yields its /mcp URL."""
    proc = subprocess.Popen([GATEWAY, "--listen", f"127.0.0.1:{port}", *args], env=variables,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    with stopped_at_exit(proc):
        line = proc.stderr.readline()
        found = re.search(r"listening on (http://\S+)", line)
        assert found, f"the gateway did not start: {line}{proc.stderr.read() if proc.poll() is not None else ''}"
        # The rest of its stderr (and its stdio servers') is read, so that a full pipe never
        # stops the gateway mid-test, and shown by pytest on a failure.
        threading.Thread(target=lambda: [sys.stderr.write(l) for l in proc.stderr], daemon=True).start()
        yield found.group(1)


@asynccontextmanager
async def session(args: list[str], variables: dict[str, str], front: str, elicitation=None,
                  token: str | None = None, port: int = 0, message_handler=None):
    """A client session with the gateway started with `args`: over its stdio, or over HTTP
    (`--listen` on `port`, by default one it chooses, read from the line it prints);
    `message_handler` is given the server's notifications."""
    if front == "stdio":
        params = StdioServerParameters(command=GATEWAY, args=args, env=variables)
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write, elicitation_callback=elicitation,
                                     message_handler=message_handler) as s:
                await s.initialize()
                yield s
        return
    with listening(args, variables, port) as url:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        async with create_mcp_http_client(headers=headers) as http:
            async with streamable_http_client(url, http_client=http) as (read, write):
                async with ClientSession(read, write, elicitation_callback=elicitation,
                                         message_handler=message_handler) as s:
                    await s.initialize()
                    yield s


@asynccontextmanager
async def gateway(env: Env, authorization_id: str, tool_log: Path, *, url: str | None = None,
                  keys: tuple[str, ...] = ("check", "read", "answer"), wait_ms: int = 30_000,
                  elicitation=None, extra_args: tuple[str, ...] = (), via: Via | None = None,
                  server_args: tuple[str, ...] = (), message_handler=None):
    """A client session through the gateway to server.py started with `server_args` (`via`: the
    test's way by default)."""
    via = via or _current
    args = ["--allowly-url", url or env.url, "--authorization-id", authorization_id, "--server-name", "shop",
            "--escalation-wait-ms", str(wait_ms), "--user", "dana", *extra_args]
    variables = gateway_env(env, keys, TOOL_LOG=str(tool_log))
    if via.back == "stdio":
        async with session([*args, "--", *server_command(tool_log, *server_args)], variables, via.front, elicitation,
                           message_handler=message_handler) as s:
            yield s
        return
    with http_server(tool_log, *server_args) as (server_url, _):
        async with session([*args, "--upstream-url", server_url], variables, via.front, elicitation,
                           message_handler=message_handler) as s:
            yield s
