"""The commented [[sources]] reference in config/example.toml is valid config."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from campaign_writer.config import from_mapping

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example.toml"
MARKER = "# --- Message-queue sources: every key"


def reference_blocks() -> list[str]:
    text = EXAMPLE.read_text(encoding="utf-8")
    tail = text[text.index(MARKER) :]
    blocks = []
    for chunk in tail.split("# [[sources]]")[1:]:
        lines = [line[2:] for line in chunk.strip().splitlines() if line.startswith("# ")]
        blocks.append("[[sources]]\n" + "\n".join(lines))
    return blocks


@pytest.mark.parametrize("block", reference_blocks(), ids=lambda b: b.split('"')[1])
def test_each_documented_source_block_loads(block: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Uncommented, each kind's block is accepted, every key it shows included."""
    monkeypatch.setenv("KAFKA_PASSWORD", "from-the-environment")
    tree = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    tree["sources"] = tomllib.loads(block)["sources"]
    config = from_mapping(tree)
    (source,) = config.sources
    assert source.settings is not None
    documented = {line.split("=")[0].strip() for line in block.splitlines()[1:]}
    assert documented - {"kind", "name"} <= set(source.options)


def test_the_reference_covers_every_kind() -> None:
    """One block per source kind the writer ships."""
    kinds = {tomllib.loads(block)["sources"][0]["kind"] for block in reference_blocks()}
    assert kinds == {"rabbitmq", "redis_streams", "nats", "kafka", "file"}
