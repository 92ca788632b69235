"""TLS for the RabbitMQ source tests: certificates, a login recorder, a TLS broker of our own.

* :func:`make_certs` writes a test CA, a server certificate for 127.0.0.1/localhost and a
  client certificate (CN ``campaign-writer``) with the ``openssl`` command, plus the
  client key encrypted, and a second CA that signed none of them.
* :class:`LoginRecorder` is a TLS server that demands a client certificate, answers the
  AMQP protocol header with ``connection.start`` (offering PLAIN and EXTERNAL, frames
  marshalled by pamqp), records the ``start-ok`` it gets (mechanism and response) and
  the peer's certificate, then refuses the login. It shows what the source hands the
  broker without a broker configured for TLS.
* :class:`TlsRabbit` starts a RabbitMQ node of our own (``rabbitmq-server``, as
  DEVELOPERS.md installs it) on free ports of 127.0.0.1, with only a TLS listener that
  verifies client certificates and the ``rabbitmq_auth_mechanism_ssl`` plugin (EXTERNAL
  takes the user from the certificate's CN), in a directory of its own; it leaves the
  shared broker alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pamqp.frame
from pamqp import commands as spec
from pamqp.header import ProtocolHeader

__all__ = ["Certs", "LoginRecorder", "TlsRabbit", "free_port", "make_certs"]

CLIENT_CN = "campaign-writer"
RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass(frozen=True)
class Certs:
    ca: Path
    server: Path
    server_key: Path
    client: Path
    client_key: Path
    client_key_encrypted: Path
    other_ca: Path


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True)


def _signed(directory: Path, name: str, subject: str, extensions: str, ca: str) -> None:
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject,
             cwd=directory)  # fmt: skip
    (directory / f"{name}.ext").write_text(extensions)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
             cwd=directory)  # fmt: skip


def make_certs(directory: Path) -> Certs:
    directory.mkdir(parents=True, exist_ok=True)
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", *key, "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2",
                 "-subj", f"/CN=cw-test-{ca}", cwd=directory)  # fmt: skip
    _signed(
        directory,
        "server",
        "/CN=localhost",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        "ca",
    )
    _signed(directory, "client", f"/CN={CLIENT_CN}", "extendedKeyUsage=clientAuth\n", "ca")
    _openssl("pkey", "-in", "client.key", "-aes256", "-passout", "pass:secret",
             "-out", "client-encrypted.key", cwd=directory)  # fmt: skip
    return Certs(
        ca=directory / "ca.pem",
        server=directory / "server.pem",
        server_key=directory / "server.key",
        client=directory / "client.pem",
        client_key=directory / "client.key",
        client_key_encrypted=directory / "client-encrypted.key",
        other_ca=directory / "other-ca.pem",
    )


@dataclass
class Login:
    mechanism: str
    response: str
    peer_subject: dict[str, str]


@dataclass
class LoginRecorder:
    """A TLS listener that takes one AMQP login attempt per connection and refuses it."""

    certs: Certs
    logins: list[Login] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None

    async def start(self) -> LoginRecorder:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=self.certs.ca)
        context.load_cert_chain(self.certs.server, self.certs.server_key)
        context.verify_mode = ssl.CERT_OPTIONAL  # a PLAIN login may come without a certificate
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, ssl.SSLError):
            peer = writer.get_extra_info("peercert") or {}
            subject = {key: value for part in peer.get("subject", ()) for key, value in part}
            assert await reader.readexactly(8) == ProtocolHeader().marshal()
            start = spec.Connection.Start(
                server_properties={"product": "login-recorder"},
                mechanisms="PLAIN EXTERNAL",
                locales="en_US",
            )
            writer.write(pamqp.frame.marshal(start, 0))
            head = await reader.readexactly(7)
            rest = await reader.readexactly(int.from_bytes(head[3:7], "big") + 1)
            _, _, start_ok = pamqp.frame.unmarshal(head + rest)
            assert isinstance(start_ok, spec.Connection.StartOk)
            self.logins.append(Login(start_ok.mechanism, start_ok.response, subject))
            refusal = spec.Connection.Close(403, "ACCESS_REFUSED - the login recorder", 0, 0)
            writer.write(pamqp.frame.marshal(refusal, 0))
            await writer.drain()
        writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class TlsRabbit:
    """A RabbitMQ node of our own with a TLS listener and EXTERNAL login."""

    def __init__(self, directory: Path, certs: Certs) -> None:
        self.directory = directory
        self.certs = certs
        self.node = f"cwtls{uuid.uuid4().hex[:8]}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.address = ("127.0.0.1", self.port)

    def _env(self) -> dict[str, str]:
        d = self.directory
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin:/usr/sbin"),
            "HOME": str(d),  # its own Erlang cookie
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_PID_FILE": str(d / "pid"),
            "RABBITMQ_CONF_ENV_FILE": "/dev/null",  # not the shared node's settings
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    @staticmethod
    def available() -> bool:
        plugins = list(Path("/usr/lib/rabbitmq/lib").glob("*/plugins/rabbitmq_auth_mechanism_ssl*"))
        return (RABBITMQ_BIN / "rabbitmq-server").exists() and bool(plugins)

    def start(self, timeout: float = 90.0) -> None:
        d = self.directory
        d.mkdir(parents=True, exist_ok=True)
        c = self.certs
        (d / "rabbitmq.conf").write_text(
            f"""
listeners.tcp = none
listeners.ssl.1 = 127.0.0.1:{self.port}
ssl_options.cacertfile = {c.ca}
ssl_options.certfile = {c.server}
ssl_options.keyfile = {c.server_key}
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = true
auth_mechanisms.1 = EXTERNAL
ssl_cert_login_from = common_name
loopback_users = none
default_user = {CLIENT_CN}
default_pass = {uuid.uuid4().hex}
"""
        )
        (d / "enabled_plugins").write_text("[rabbitmq_auth_mechanism_ssl].\n")
        subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmq-server"), "-detached"],
            env=self._env(),
            cwd=d,
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + timeout
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 1),
            ):
                return
            if time.monotonic() > deadline:
                self.stop()
                logs = "\n".join(p.read_text()[-2000:] for p in (d / "log").glob("*.log"))
                raise AssertionError(f"the TLS RabbitMQ node did not start:\n{logs}")
            time.sleep(0.2)

    def ctl(self, *args: str) -> str:
        result = subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.node, *args],
            env=self._env(),
            cwd=self.directory,
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return result.stdout

    def stop(self) -> None:
        """``rabbitmqctl stop``; failing that, SIGKILL to this node's own process only."""
        try:
            self.ctl("stop")
        except (subprocess.SubprocessError, OSError):
            with contextlib.suppress(OSError, ValueError):
                pid = int((self.directory / "pid").read_text().strip())
                if (
                    f"RABBITMQ_NODENAME={self.node}".encode()
                    in Path(f"/proc/{pid}/environ").read_bytes()
                ):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.directory / "mnesia", ignore_errors=True)
