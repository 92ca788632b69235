"""The `campaign-writer simulate` command, and serving HTTPS with a self-signed certificate."""

from __future__ import annotations

import asyncio
import re
import signal
import ssl
import subprocess
import sys

import aiohttp
import pytest

from campaign_writer.cli import main
from campaign_writer.simulator.config import knob_fields
from tests.support.services import require_command

LISTENING = re.compile(r"simulator listening on (https?://127\.0\.0\.1:(\d+))\n")


def test_help_documents_every_knob_credentials_and_control(capsys) -> None:
    """--help lists a flag for every knob, the default credentials and the control fields."""
    with pytest.raises(SystemExit) as exited:
        main(["simulate", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for spec in knob_fields():
        if spec.metadata["cli"]:
            assert "--" + spec.name.replace("_", "-") in text, spec.name
    for needle in (
        "admin, password admin",
        "sim-client, secret sim-secret",
        "--config",
        "--user",
        "--ims-client",
        "--outage",
        '"outage_s"',
        '"expire_sessions"',
        '"revoke_tokens"',
        '"schedule"',
        "/__sim/records?schema=",
        "masked_s, masked_in_s",
        "badlogin_s, badlogin_in_s",
        "{default,strict}",
        "{accept,refuse,partial}",
        "{coded,duplicate,masked}",
    ):
        assert needle in text, needle


async def start_cli(*args: str) -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "campaign_writer",
        "simulate",
        "--port",
        "0",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = (await asyncio.wait_for(process.stdout.readline(), timeout=30)).decode()
    match = LISTENING.fullmatch(line)
    assert match, line
    return process, match.group(1)


async def test_cli_serves_on_a_free_port_and_stops_on_sigterm(tmp_path) -> None:
    """One 'listening' line with the real port; flags override the file; SIGTERM exits 0."""
    config = tmp_path / "sim.toml"
    config.write_text(
        'tps_limit = 3\nlimiter = "fixed"\n[[users]]\nlogin = "ops"\npassword = "ops-pw"\n'
    )
    log = tmp_path / "calls.ndjson"
    process, url = await start_cli(
        "--config",
        str(config),
        "--tps-limit",
        "9",
        "--latency-ms",
        "0",
        "--call-log",
        str(log),
        "--ims-client",
        "ci:ci-secret",
        "--no-retry-after",
        "--outage",
        "3600:3660",
    )
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "/__sim/stats") as answer:
                stats = await answer.json()
            assert stats["tps_limit"] == 9 and stats["limiter"] == "fixed"
            assert [w["kind"] for w in stats["windows"]] == ["outage"]
            assert 3590 < stats["windows"][0]["start_in_s"] <= 3600
            async with session.get(url + "/__sim/control") as answer:
                assert (await answer.json())["config"]["retry_after"] is False
            form = {
                "grant_type": "client_credentials",
                "client_id": "ci",
                "client_secret": "ci-secret",
            }
            async with session.post(url + "/ims/token/v3", data=form) as answer:
                assert answer.status == 200
            body = (
                '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>'
                '<m:Logon xmlns:m="urn:xtk:session"><t/><l>ops</l><p>ops-pw</p><x/></m:Logon>'
                "</s:Body></s:Envelope>"
            )
            async with session.post(url + "/nl/jsp/soaprouter.jsp", data=body) as answer:
                assert answer.status == 200 and b"pstrSessionToken" in await answer.read()
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=15) == 0
    assert b'"method":"Logon"' in log.read_bytes()
    remaining = await process.stdout.read()
    assert remaining == b""  # exactly one line on stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rate-500", "2"], "rate_500"),
        (["--limiter", "leaky"], "limiter"),
        (["--user", "nopass"], "--user"),
    ],
)
def test_cli_refuses_bad_settings(args, message) -> None:
    """A wrong flag value exits 2 with a message naming it."""
    result = subprocess.run(
        [sys.executable, "-m", "campaign_writer", "simulate", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2 and message in result.stderr
    assert result.stdout == ""


@pytest.fixture
def self_signed(tmp_path) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 made with openssl."""
    require_command("openssl", "openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return str(cert), str(key)


async def test_tls_is_verified_against_the_self_signed_certificate(
    simulator_factory, self_signed
) -> None:
    """Served over HTTPS: refused without the CA bundle, accepted with it."""
    cert, key = self_signed
    sim = await simulator_factory(tls_cert=cert, tls_key=key, latency_ms=0)
    assert sim.url.startswith("https://127.0.0.1:")
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with session.get(sim.url + "/r/test"):
                pass
    trusted = ssl.create_default_context(cafile=cert)
    connector = aiohttp.TCPConnector(ssl=trusted)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(sim.url + "/r/test") as answer,
    ):
        assert answer.status == 200
    assert (await sim.logon()).session_token  # the handle trusts the certificate


async def test_cli_serves_https(self_signed) -> None:
    """--tls-cert/--tls-key make the command print and serve an https URL."""
    cert, key = self_signed
    process, url = await start_cli("--tls-cert", cert, "--tls-key", key)
    try:
        assert url.startswith("https://")
        trusted = ssl.create_default_context(cafile=cert)
        connector = aiohttp.TCPConnector(ssl=trusted)
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get(url + "/r/test") as answer,
        ):
            assert answer.status == 200
    finally:
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), timeout=15) == 0
