"""SQLite persistence: a restarted simulator keeps the records it acknowledged."""

from __future__ import annotations

import sqlite3

from campaign_writer.campaign.outcome import Ok

STG = "dem:sampleTableStg"


async def test_records_survive_a_restart(simulator_factory, tmp_path) -> None:
    """Inserts, updates and deletes written to the db file are all there after a restart."""
    db = str(tmp_path / "sim.sqlite3")
    first = await simulator_factory(latency_ms=0, db=db)
    creds = await first.logon()
    steps = [
        ("Ingest", f'<sampleTableStg xtkschema="{STG}" testcol1="plain"/>'),
        ("IngestExt", f'<sampleTableStg xtkschema="{STG}" _key="@id" id="a" testcol1="1"/>'),
        ("IngestExt", f'<sampleTableStg xtkschema="{STG}" _key="@id" id="b" testcol1="1"/>'),
        ("IngestExt", f'<sampleTableStg xtkschema="{STG}" _key="@id" id="a" testcol1="2"/>'),
        ("IngestExt", f'<sampleTableStg xtkschema="{STG}" _key="@id" id="b" _operation="delete"/>'),
    ]
    for method, document in steps:
        assert isinstance((await first.write(method, document, creds)).outcome(), Ok)
    before = await first.records(STG)
    await first.close()

    second = await simulator_factory(latency_ms=0, db=db)
    assert await second.records(STG) == before
    assert [(r.get("id"), r["testcol1"]) for r in before] == [(None, "plain"), ("a", "2")]
    creds = await second.logon()  # sessions are not kept: a restart logs everyone out
    doc = f'<sampleTableStg xtkschema="{STG}" _key="@id" id="a" testcol1="3"/>'
    assert isinstance((await second.write("IngestExt", doc, creds)).outcome(), Ok)
    doc = f'<sampleTableStg xtkschema="{STG}" _key="@id" id="c" testcol1="new"/>'
    assert isinstance((await second.write("IngestExt", doc, creds)).outcome(), Ok)
    after = await second.records(STG)
    assert [(r.get("id"), r["testcol1"]) for r in after] == [
        (None, "plain"),
        ("a", "3"),
        ("c", "new"),
    ]
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM records").fetchone() == (3,)
    await second.control(clear_records=True)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM records").fetchone() == (0,)


async def test_an_unusable_db_file_is_a_config_error(tmp_path) -> None:
    """A file that is not SQLite is refused with a ConfigError naming it."""
    import pytest

    from campaign_writer.errors import ConfigError
    from campaign_writer.simulator import Simulator, SimulatorConfig

    bad = tmp_path / "bad.sqlite3"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigError, match=r"bad\.sqlite3"):
        Simulator(SimulatorConfig(port=0, db=str(bad)))
