"""Access: the intake token, the admin listener's address, TLS verification and CA bundles.

The TLS cases serve the simulator over HTTPS with self-signed certificates made at
test time with the ``openssl`` command; the writer is a real process each time.
"""

from __future__ import annotations

import asyncio
import ipaddress
import subprocess
import tomllib
from pathlib import Path

import aiohttp
import pytest

from campaign_writer.config import from_mapping
from tests.reliability.conftest import Figures
from tests.reliability.support import WriterProc, base_tree, self_signed
from tests.support.services import missing, port_open
from tests.support.writer import EXAMPLE, post_events, sample_events, wait_for

SAMPLE = "dem:sampleTableStg"
TOKEN = "tk-H7m2Qx9PzWv4"


async def test_intake_without_or_with_a_wrong_token_gets_401(
    simulator, tmp_path: Path, figures: Figures
) -> None:
    """With http.token set, a request with no Authorization, another scheme, an empty or
    wrong bearer, or the token with a byte more or less gets 401 and stores nothing;
    the right token gets 202."""
    tree = base_tree(simulator.url, tmp_path / "queue.sqlite3")
    tree["http"]["token"] = TOKEN
    writer = WriterProc(tmp_path, tree)
    url = await writer.start()
    body = b'{"type": "sample", "id": "refused", "testcol1": "x"}'
    wrong = [
        {},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer tk-H7m2Qx9PzWv5"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": TOKEN},
    ]
    try:
        async with aiohttp.ClientSession() as session:
            for headers in wrong:
                headers = {"Content-Type": "application/json", **headers}
                async with session.post(f"{url}/v1/events", data=body, headers=headers) as answer:
                    assert answer.status == 401, headers
                    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
                    assert TOKEN not in await answer.text()
            accepted = await post_events(url, sample_events(3), session=session, token=TOKEN)
        assert accepted == 3
        await wait_for(lambda: _count(simulator, 3), timeout=30)
        assert "refused" not in {row["id"] for row in await simulator.records(SAMPLE)}
        stats = await writer.stats()
        assert stats["queue"]["dead_letters"] == 0
        assert await writer.stop() == 0
    finally:
        writer.close()
        figures.writer_crashes += len(writer.unexpected_exits)


def _listening(pid: int) -> list[str]:
    """The local addresses the process listens on over TCP (from ``ss``)."""
    out = subprocess.run(
        ["ss", "-Hltnp"], capture_output=True, text=True, check=True, timeout=10
    ).stdout
    return [line.split()[3] for line in out.splitlines() if f"pid={pid}," in line]


async def test_admin_listener_binds_to_loopback_by_default(simulator, tmp_path: Path) -> None:
    """Without admin.listen the admin listener is 127.0.0.1:9090, and a real writer process
    listens on loopback addresses only."""
    tree = base_tree(simulator.url, tmp_path / "queue.sqlite3")
    tree.pop("admin", None)
    assert from_mapping(tree).admin.listen == "127.0.0.1:9090"
    assert tomllib.loads(EXAMPLE.read_text())["admin"]["listen"] == "127.0.0.1:9090"
    if port_open(9090):
        missing("port 9090 (the admin default) is taken on this machine")
    writer = WriterProc(tmp_path, tree, admin_listen=None)
    await writer.start()
    try:
        status, body = await writer.get("/healthz")
        assert status == 200, body
        addresses = _listening(writer.pid)
        assert "127.0.0.1:9090" in addresses
        for address in addresses:
            host = address.rpartition(":")[0].strip("[]")
            assert ipaddress.ip_address(host).is_loopback, addresses
        assert await writer.stop() == 0
    finally:
        writer.close()


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Two unrelated self-signed certificates for 127.0.0.1, made with openssl."""
    directory = tmp_path_factory.mktemp("tls")
    return {name: self_signed(directory, name) for name in ("campaign", "other")}


def _tls_tree(simulator, tmp_path: Path, mode: str, bundle: Path | None) -> dict:
    tree = base_tree(simulator.url, tmp_path / f"{mode}-{bool(bundle)}.sqlite3")
    if mode == "ims":
        tree["campaign"]["auth"] = {
            "mode": "ims",
            "ims_url": simulator.ims_url,
            "client_id": "sim-client",
            "client_secret": "sim-secret",
            "scope": "openid,AdobeID",
        }
    if bundle is not None:
        tree["campaign"]["tls"]["ca_bundle"] = str(bundle)
    return tree


@pytest.mark.parametrize("mode", ["session", "ims"])
async def test_tls_is_verified_by_default_and_a_ca_bundle_makes_it_pass(
    simulator_factory, certificates, tmp_path: Path, mode: str
) -> None:
    """Against the simulator over HTTPS with a self-signed certificate: without a CA bundle
    the writer refuses the certificate (Logon, or the IMS token request, fails on TLS and
    nothing reaches Campaign); with campaign.tls.ca_bundle naming it, events are delivered."""
    cert, key = certificates["campaign"]
    simulator = await simulator_factory(
        tls_cert=str(cert), tls_key=str(key), tps_limit=1000, latency_ms=0
    )
    assert simulator.url.startswith("https://127.0.0.1:")
    refused = WriterProc(tmp_path, _tls_tree(simulator, tmp_path, mode, None), f"{mode}-plain")
    try:
        url = await refused.start()
        await post_events(url, sample_events(5, prefix="tls-refused-"))

        async def failed_on_tls() -> str | None:
            error = (await refused.stats())["auth"]["last_error"]
            return error if error and "certificate verify failed" in error else None

        error = await wait_for(failed_on_tls, timeout=30)
        await asyncio.sleep(1.0)  # a writer that ignored the failure would have sent by now
        stats = await simulator.stats()
        assert stats["calls_total"] == 0, error
        assert stats["ims_tokens"] == 0
        assert (await refused.stats())["queue"]["depth"] == 5  # kept, not dropped
        assert await refused.stop() == 0
    finally:
        refused.close()
    trusted = WriterProc(tmp_path, _tls_tree(simulator, tmp_path, mode, cert), f"{mode}-ca")
    try:
        url = await trusted.start()
        await post_events(url, sample_events(5, prefix="tls-trusted-"))
        await wait_for(lambda: _count(simulator, 5), timeout=30)
        if mode == "ims":
            assert (await simulator.stats())["ims_tokens"] >= 1
        assert await trusted.stop() == 0
    finally:
        trusted.close()


async def test_a_ca_bundle_adds_to_the_system_store(
    simulator_factory, certificates, tmp_path: Path
) -> None:
    """campaign.tls.ca_bundle is documented as extra CAs: with the simulator's certificate
    in the system store (SSL_CERT_FILE) and an unrelated CA as the bundle, Campaign's
    certificate still verifies, as a public IMS must while Campaign has a private CA."""
    cert, key = certificates["campaign"]
    other, _ = certificates["other"]
    simulator = await simulator_factory(
        tls_cert=str(cert), tls_key=str(key), tps_limit=1000, latency_ms=0
    )
    writer = WriterProc(tmp_path, _tls_tree(simulator, tmp_path, "ims", other), "extra-ca")
    try:
        url = await writer.start(env={"SSL_CERT_FILE": str(cert)})
        await post_events(url, sample_events(5, prefix="tls-system-"))
        await wait_for(lambda: _count(simulator, 5), timeout=30)
        assert await writer.stop() == 0
    finally:
        writer.close()


async def _count(simulator, count: int) -> bool:
    return len(await simulator.records(SAMPLE)) >= count
