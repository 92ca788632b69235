"""``campaign-writer scaffold SCHEMA``: print a route for the config, from a schema.

The schema comes from the instance (``--remote``, with ``--config`` for its URL and
auth; reads only) or from an XML file (``--file``: an ``xtk:srcSchema`` or
``xtk:schema``, or a data package of them as the console exports it). ``SCHEMA`` may
name the staging twin of the file's schema (``acme:eventStg`` for a file holding
``acme:event`` with ``autoStg``). Exit codes: 0 printed, 1 no such schema or an
unusable file, 2 Campaign out of reach or refusing the credentials.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..campaign.schemas import InstanceSchema

__all__ = ["HELP", "configure", "execute"]

HELP = (
    "Print a TOML route for a schema, read from the instance (--remote) or a file (--file);"
    " exit 1 if there is no such schema, 2 if Campaign cannot be reached."
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("schema", metavar="SCHEMA", help="the schema id, e.g. nms:recipientStg")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--remote", action="store_true", help="read it from the instance of --config"
    )
    source.add_argument("--file", metavar="XML", help="read it from an exported schema file")
    parser.add_argument("--config", metavar="FILE", help="TOML config (for --remote)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config key, as `run --set` would (repeatable)",
    )


def execute(args: argparse.Namespace) -> int | Coroutine[Any, Any, int]:
    if args.remote:
        return _remote(args)
    return _from_file(args)


def _fail(message: str, code: int) -> int:
    print(f"campaign-writer scaffold: {message}", file=sys.stderr)
    return code


def _print(schema: InstanceSchema, origin: str) -> int:
    from ..datamodel.scaffold import scaffold_route

    sys.stdout.write(scaffold_route(schema, origin))
    return 0


def _from_file(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ..campaign.schemas import parse_schema
    from ..campaign.schemaxml import MAX_SCHEMA_FILE_BYTES, schema_documents
    from ..campaign.soap import parse_xml
    from ..errors import ResponseError

    try:
        document = parse_xml(Path(args.file).read_bytes(), MAX_SCHEMA_FILE_BYTES)
    except (OSError, ResponseError) as exc:
        return _fail(f"{args.file}: {exc}", 1)
    held = {f"{d.get('namespace', '')}:{d.get('name', '')}": d for d in schema_documents(document)}
    if not held:
        return _fail(
            f"{args.file}: not an exported schema (<srcSchema> or <schema>, or a <package>"
            " of them)",
            1,
        )
    file_id = args.schema if args.schema in held else args.schema.removesuffix("Stg")
    root = held.get(file_id)
    if root is None:
        return _fail(f"{args.file} holds {', '.join(held)}, not {args.schema}", 1)
    schema = parse_schema(file_id, root)
    if args.schema != file_id:
        if not schema.auto_stg:
            return _fail(f"{file_id} has no staging twin (no autoStg in {args.file})", 1)
        schema = replace(schema, id=args.schema, auto_stg=False)
    return _print(schema, Path(args.file).name)


async def _remote(args: argparse.Namespace) -> int:
    from ..campaign.connect import schema_reader
    from ..campaign.schemas import SchemaLookupError
    from ..config import load
    from ..errors import ConfigError

    if not args.config:
        return _fail("--remote needs --config FILE (the instance's URL and auth)", 1)
    try:
        config = load(args.config, overrides=args.set)
    except ConfigError as exc:
        return _fail(f"{args.config}: {exc}", 1)
    try:
        async with schema_reader(config.campaign, config.sender.timeout_s) as reader:
            schema = await reader.read(args.schema)
    except SchemaLookupError as exc:
        return _fail(
            f"cannot read {args.schema} ({exc.kind}): {exc}", 1 if exc.kind == "refused" else 2
        )
    if schema is None:
        return _fail(f"the instance at {config.campaign.url} has no schema {args.schema}", 1)
    return _print(schema, config.campaign.url)
