"""``campaign-writer validate``: check a config file, print every problem with its path.

On success it prints a summary, then every key with its value and where the value
came from: the file, a ``CAMPAIGN_WRITER__*`` variable, ``--set``, or the default.

With ``--remote`` it also logs on to the configured instance, reads every route's
target schema (never writing anything) and checks each route and field against it
(:mod:`campaign_writer.datamodel.check`). Exit codes: 0 when the config is valid (warnings
allowed), 1 on any error, 2 when Campaign cannot be reached or refuses the
credentials. ``--json`` prints one JSON object instead of the lines.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Coroutine, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import Config
    from ..overrides import Origins

__all__ = ["HELP", "configure", "execute"]

HELP = (
    "Check a config file; print every problem with its key path (exit 1 if any); with"
    " --remote, check every route against the instance's own schemas."
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE", help="TOML config file")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="check with this override applied, as `run --set` would (repeatable)",
    )
    parser.add_argument(
        "--remote",
        action="store_true",
        help="log on to campaign.url with the configured auth and check every route against"
        " the instance's schemas (reads only; exit 2 if Campaign cannot be reached)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")


def execute(args: argparse.Namespace) -> int | Coroutine[Any, Any, int]:
    from ..config import load
    from ..errors import ConfigError
    from ..overrides import Origins

    origins = Origins()
    try:
        config = load(args.config, overrides=args.set, origins=origins)
    except ConfigError as exc:
        if args.json:
            _print_json({"ok": False, "config_problems": exc.problems})
            return 1
        count = len(exc.problems)
        print(f"{args.config}: {count} problem{'s' if count != 1 else ''}")
        for problem in exc.problems:
            print(problem)
        return 1
    if args.remote:
        return _remote(args, config)
    if args.json:
        origins_of = dict(origins.entries())
        _print_json({"ok": True, "config_warnings": warnings(config), "origins": origins_of})
        return 0
    routes = ", ".join(f"{r.name} -> {r.schema} ({r.method})" for r in config.routes)
    print(f"{args.config}: OK")
    tps = "auto" if config.campaign.auto_limit else f"{config.campaign.tps_limit:g}"
    print(f"  campaign  {config.campaign.url} (auth {config.campaign.auth.mode}, tps_limit {tps})")
    print(
        f"  intake    http://{config.http.listen}/v1/events"
        f"{' (token required)' if config.http.token else ''}"
    )
    print(
        f"  queue     {config.queue.path} (max {config.queue.max_bytes} bytes, "
        f"synchronous {config.queue.synchronous}, "
        f"commit window {config.queue.commit_window_ms:g} ms)"
    )
    print(f"  routes    {routes}")
    if config.sources:
        print(f"  sources   {', '.join(f'{s.name} ({s.kind})' for s in config.sources)}")
    print("values (where each came from: file, env VARIABLE, --set or default):")
    for line in value_lines(config, origins):
        print(f"  {line}")
    for warning in warnings(config):
        print(f"warning: {warning}")
    return 0


def value_lines(config: Config, origins: Origins) -> list[str]:
    """``path = value  (origin)`` for every key given or defaulted; secrets masked: those
    of a secret's key, and any value holding a secret the config read under another name
    (a broker URL with its password, a Kafka SASL password)."""
    from ..settings import SECRET_KEYS

    secrets = _secrets_in(config)
    lines = []
    for path, origin in origins.entries():
        value = _lookup(config, path) if origin == "default" else origins.values.get(path)
        if path.rpartition(".")[2] in SECRET_KEYS:
            shown = "(none)" if origin == "default" else "(secret)"
        elif _shows_secret(str(value), secrets):
            shown = "(secret)"
        else:
            shown = _show(value)
        lines.append(f"{path} = {shown}  ({origin})")
    return lines


def _shows_secret(text: str, secrets: set[str]) -> bool:
    """Whether ``text`` is a secret, or holds one long enough not to be an ordinary word."""
    return any(text == secret or (len(secret) >= 6 and secret in text) for secret in secrets)


def _secrets_in(node: Any, found: set[str] | None = None) -> set[str]:
    """The value of every Secret in a parsed config (dataclasses, mappings, sequences)."""
    from dataclasses import fields, is_dataclass

    from ..logs import Secret

    found = set() if found is None else found
    if isinstance(node, Secret):
        if node.reveal():
            found.add(node.reveal())
    elif is_dataclass(node) and not isinstance(node, type):
        for item in fields(node):
            _secrets_in(getattr(node, item.name), found)
    elif isinstance(node, Mapping):
        for item in node.values():
            _secrets_in(item, found)
    elif isinstance(node, list | tuple | set | frozenset):
        for item in node:
            _secrets_in(item, found)
    return found


_MISSING = object()


def _lookup(config: Config, path: str) -> Any:
    """The parsed value at a key path, where the config's fields follow the keys."""
    node: Any = config
    for part in path.replace("[", ".[").split("."):
        if part.startswith("["):
            try:
                node = node[int(part[1:-1])]
            except (IndexError, TypeError, KeyError):
                return _MISSING
            continue
        for name in (part, f"{part}_s"):
            if hasattr(node, name):
                node = getattr(node, name)
                break
        else:
            return _MISSING
    return node


def _show(value: Any) -> str:
    if value is _MISSING:
        return "(as documented)"
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else repr(value[:57] + "...")
    if isinstance(value, int | float):
        return f"{value:g}" if isinstance(value, float) else str(value)
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def warnings(config: Config) -> list[str]:
    """What is legal but likely to surprise: each a sentence that names the route."""
    found = []
    for route in config.routes:
        if route.method == "Ingest" and not route.key_spec:
            found.append(
                f"route {route.name!r}: Ingest without a key inserts every record it is"
                " sent; delivery is at least once, so a call resent after a lost answer"
                " stores its records twice. Give the route a key (key = [...]) to make a"
                " resend harmless."
            )
    return found


def _print_json(data: dict[str, Any]) -> None:
    import orjson

    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


async def _remote(args: argparse.Namespace, config: Config) -> int:
    from ..campaign.connect import schema_reader
    from ..campaign.schemas import SchemaLookupError
    from ..datamodel.check import check_routes, read_schemas, report

    try:
        async with schema_reader(config.campaign, config.sender.timeout_s) as reader:
            lookups = await read_schemas(config.routes, reader)
    except SchemaLookupError as exc:
        if args.json:
            _print_json({"ok": False, "unreachable": exc.kind, "reason": str(exc)})
        else:
            print(f"{config.campaign.url}: cannot check the routes ({exc.kind}): {exc}")
        return 2
    findings = check_routes(config.routes, lookups)
    lines, data = report(config.routes, findings)
    if args.json:
        _print_json({**data, "instance": config.campaign.url, "config_warnings": warnings(config)})
    else:
        print(f"{args.config}: checked against {config.campaign.url}")
        for line in lines:
            print(line)
        for warning in warnings(config):
            print(f"warning: {warning}")
    return 1 if data["errors"] else 0
