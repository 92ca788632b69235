"""``campaign-writer simulate``: run the Campaign simulator until SIGTERM or SIGINT.

Every knob of :class:`campaign_writer.simulator.SimulatorConfig` is a flag (field
``tps_limit`` is ``--tps-limit``); flags override ``--config``, which overrides the
defaults. Once listening, exactly one line goes to stdout,
``simulator listening on http://HOST:PORT`` with the real port (so ``--port 0``
works for scripts); logs go to stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Coroutine
from typing import Any

__all__ = ["HELP", "configure", "execute"]

HELP = "Run the Campaign simulator: a local stand-in for an Adobe Campaign v8 tenant."

EPILOG = """\
default credentials:
  operator   login admin, password admin           (Logon; add more with --user or [[users]])
  IMS client client_id sim-client, secret sim-secret (POST /ims/token/v3; --ims-client)

endpoints:
  POST /nl/jsp/soaprouter.jsp[?soapAction=...]  SOAP: Logon BearerTokenLogon Logoff GetUserInfo
                                                GetEntityIfMoreRecent Write WriteCollection
                                                Ingest IngestExt
  GET  /r/test, GET /nl/jsp/ping.jsp            health (ping needs a session or bearer token)
  POST /ims/token/v3                            grant_type=client_credentials, client_id,
                                                client_secret, scope (form; scope required by
                                                profile strict) -> access_token, expires_in
  GET  /__sim/stats                             counters, current limit and limiter model
  GET  /__sim/records?schema=ID&offset=0&limit=1000   {"records": [...], "total": n}
  GET  /__sim/calls?since=SEQ                   the call log after entry SEQ (NDJSON fields)
  GET|POST /__sim/control                       read or change knobs at run time (JSON)

POST /__sim/control fields (JSON object, all optional):
  any knob marked [runtime] above, by its field name, e.g. {"tps_limit": 10, "limiter": "fixed"}
  "method_limits": {"Ingest": 12, "WriteCollection": 5}   per-method calls/s (replaces all)
  "schedule": [{"kind": K, "start_s": S, "end_s": E, "rate": R}]  windows from now (replaces all)
      K: 500 502 503 timeout reset truncate html soap expire revoke
         entity laughs huge drip masked badlogin outage
  "outage_s": N [, "outage_in_s": D]   down for N s from now (+D); 0 ends outages
  "masked_s": N [, "masked_in_s": D]   every call answered SOP-330023 (HTTP 500,
                                       SOAP-ENV:Error, no detail) for N s; 0 ends them
  "badlogin_s": N [, "badlogin_in_s": D]  every call answered the code-less "Invalid login
                                       or password. Connection denied." for N s
  "expire_sessions": true   every session token becomes invalid (XSV-350008)
  "revoke_tokens": true     every IMS token is revoked
  "clear_records": true     empty every table
  "reset_stats": true       zero the /__sim/stats counters
  "replicate_now": true     move staged rows to their source schema now, as an on-demand
                            StartReplicateStagingData would (replicate_interval_s: on a timer)

config file (--config): TOML, keys as the field names, at top level or under [simulator]
  (--example-config prints one with every key);
  [[users]] login/password/schemas, [[ims_clients]] client_id/client_secret/schemas,
  [[schedule]] kind/start_s/end_s/rate (seconds from start), [schemas."ns:name"] with
  attributes = {name = {type, length}}, keys = [...], auto_stg = true;
  schema_files = ["x.xml"]: xtk:srcSchema / xtk:schema files (or packages of them) as
  exported from an instance.
  Built-in schemas: dem:sampleTable(+Stg), nms:recipient(+Stg), nms:subscriptionRcp(+Stg),
  nms:appSubscriptionRcp(+Stg).
"""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _metavar(name: str, meta: Any) -> str:
    if meta["choices"]:
        # An empty choice means "the profile decides"; the help text says so.
        return "{" + ",".join(c for c in meta["choices"] if c) + "}"
    if "rate" in name.split("_"):
        return "SHARE"
    if meta["kind"] in ("int", "int?", "float"):
        return "N"
    return {
        "path": "FILE",
        "methods": "METHODS",
        "method_limits": "METHOD=N,...",
        "files": "FILES",
        "str": "TEXT",
    }.get(meta["kind"], name.upper())


def configure(parser: argparse.ArgumentParser) -> None:
    from campaign_writer.simulator.config import knob_fields

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("--config", metavar="FILE", help="TOML file of simulator settings")
    knobs = parser.add_argument_group("simulator knobs ([runtime]: also via /__sim/control)")
    for spec in knob_fields():
        meta = spec.metadata
        if not meta["cli"]:
            continue
        default = spec.default
        if meta["kind"] == "method_limits":
            default = "none"
        elif isinstance(default, tuple):
            default = ",".join(default) or ("none" if meta["kind"] == "files" else "all")
        text = f"{meta['help']} (default: {default})"
        if meta["runtime"]:
            text += " [runtime]"
        if meta["kind"] == "bool":
            knobs.add_argument(
                _flag(spec.name),
                dest=spec.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=text,
            )
        else:
            knobs.add_argument(
                _flag(spec.name),
                dest=spec.name,
                metavar=_metavar(spec.name, meta),
                default=argparse.SUPPRESS,
                help=text.replace("%", "%%"),
            )
    parser.add_argument(
        "--user",
        action="append",
        default=[],
        metavar="LOGIN:PASSWORD",
        help="add an operator (repeatable)",
    )
    parser.add_argument(
        "--ims-client",
        action="append",
        default=[],
        metavar="ID:SECRET",
        help="add an IMS client (repeatable)",
    )
    parser.add_argument(
        "--outage",
        action="append",
        default=[],
        metavar="START:END",
        help="outage window in seconds from start, e.g. 30:90 (repeatable)",
    )
    parser.add_argument("--log-level", default="INFO", help="log level on stderr (default: INFO)")
    parser.add_argument(
        "--exit-with-stdin",
        action="store_true",
        help="stop when standard input ends: a parent that holds the other end of a "
        "pipe (campaign-writer run --with-simulator) never leaves this process behind, "
        "even if it is killed",
    )
    parser.add_argument(
        "--example-config",
        action="store_true",
        help="print a TOML file with every key at its default, and exit",
    )


def _pairs(values: list[str], flag: str, names: tuple[str, str]) -> list[dict[str, str]]:
    from campaign_writer.errors import ConfigError

    tables = []
    for value in values:
        first, sep, second = value.partition(":")
        if not sep or not first:
            raise ConfigError(f"{flag}: expected {names[0].upper()}:{names[1].upper()}")
        tables.append({names[0]: first, names[1]: second})
    return tables


def build_config(args: argparse.Namespace) -> Any:
    """Defaults, then ``--config``, then the flags given on the command line."""
    from campaign_writer.simulator.config import (
        SimulatorConfig,
        apply_changes,
        knob_fields,
        load_config,
    )

    config = load_config(args.config) if args.config else SimulatorConfig()
    changes: dict[str, object] = {
        spec.name: getattr(args, spec.name)
        for spec in knob_fields()
        if spec.metadata["cli"] and hasattr(args, spec.name)
    }
    users = _pairs(args.user, "--user", ("login", "password"))
    clients = _pairs(args.ims_client, "--ims-client", ("client_id", "client_secret"))
    if users:
        changes["users"] = (*config.users, *apply_changes(config, {"users": users}).users)
    if clients:
        extra = apply_changes(config, {"ims_clients": clients}).ims_clients
        changes["ims_clients"] = (*config.ims_clients, *extra)
    if args.outage:
        windows = []
        for value in args.outage:
            start, _, end = value.partition(":")
            windows.append({"kind": "outage", "start_s": start, "end_s": end})
        extra_windows = apply_changes(config, {"schedule": windows}, source="--outage").schedule
        changes["schedule"] = (*config.schedule, *extra_windows)
    return apply_changes(config, changes, source="flags")


async def _run(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from campaign_writer.errors import ConfigError
    from campaign_writer.logs import setup_logging
    from campaign_writer.simulator import Simulator

    setup_logging(args.log_level)
    try:
        config = build_config(args)
    except ConfigError as exc:
        print(f"campaign-writer simulate: error: {exc}", file=sys.stderr)
        return 2
    try:
        simulator = Simulator(config)
    except (OSError, ConfigError) as exc:
        print(f"campaign-writer simulate: cannot start: {exc}", file=sys.stderr)
        return 1
    try:
        await simulator.start()
    except OSError as exc:
        print(f"campaign-writer simulate: cannot start: {exc}", file=sys.stderr)
        await simulator.close()
        return 1
    print(f"simulator listening on {simulator.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    watcher = loop.create_task(_stdin_ended(stop)) if args.exit_with_stdin else None
    try:
        await stop.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        if watcher is not None:
            watcher.cancel()
        await simulator.close()
    return 0


async def _stdin_ended(stop: Any) -> None:
    """Set ``stop`` (an asyncio.Event) once standard input ends: the parent is gone."""
    import asyncio

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.read(4096):
        pass
    stop.set()


def execute(args: argparse.Namespace) -> Coroutine[Any, Any, int] | int:
    if args.example_config:
        from importlib.resources import files

        sys.stdout.write((files("campaign_writer.simulator") / "example.toml").read_text())
        return 0
    return _run(args)
