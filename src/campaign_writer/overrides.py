"""Config values from outside the file: ``--set`` and ``CAMPAIGN_WRITER__*`` variables.

Both change the parsed TOML tree before it is checked, so a value given either way
meets the same checks as one written in the file, unknown keys included. The
environment comes first, ``--set`` last (the command line is the most specific)::

    CAMPAIGN_WRITER__BATCH__LINGER_MS=100          -> batch.linger_ms = 100
    CAMPAIGN_WRITER__CAMPAIGN__AUTH__MODE=ims      -> campaign.auth.mode = "ims"
    CAMPAIGN_WRITER__ROUTES__0__SCHEMA=acme:xStg   -> routes[0].schema = "acme:xStg"

A variable's name is ``CAMPAIGN_WRITER__`` then the key path, one ``__`` between
segments, in any case: a segment takes the spelling of a key the file already has
(``..._FIELDS__FIRSTNAME__LENGTH`` reaches ``fields.firstName.length``), else its
lowercase; a segment of digits indexes an array of tables. Values are TOML literals
when they parse as one (``100``, ``true``, ``["a", "b"]``, ``"quoted"``), else the
text itself. Secrets are never taken this
way (their ``*_env`` / ``*_file`` forms are: ``..._AUTH__PASSWORD_FILE=/run/...``).

:class:`Origins` remembers where each value came from (the file, a variable,
``--set`` or the default) for ``campaign-writer validate``.
"""

from __future__ import annotations

import itertools
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final

from .settings import SECRET_KEYS

__all__ = ["ENV_PREFIX", "Origins", "apply_environment", "apply_overrides", "env_overrides"]

ENV_PREFIX: Final = "CAMPAIGN_WRITER__"

_SEGMENT = re.compile(r"([A-Za-z0-9_-]+)((?:\[\d+\])*)")
_ENV_SEGMENT = re.compile(r"[a-z][a-z0-9_]*|\d+")


class Origins:
    """Where each key path's value came from: ``file``, ``env NAME``, ``--set`` or
    ``default``, in the order keys were first seen."""

    def __init__(self) -> None:
        self.by_path: dict[str, str] = {}
        self.values: dict[str, Any] = {}
        self.defaults: list[str] = []

    def mark_tree(self, tree: Mapping[str, Any], origin: str) -> None:
        """Every leaf of a parsed TOML tree came from ``origin``."""
        self.mark("", tree, origin)

    def mark(self, path: str, value: Any, origin: str) -> None:
        """``path`` (and any leaf under it, when the value is a table) came from ``origin``."""
        for leaf, leaf_value in _leaves(value, path):
            self.by_path[leaf] = origin
            self.values[leaf] = leaf_value

    def add_defaults(self, taken: Iterable[str]) -> None:
        """Key paths the config asked for and nobody gave: they hold their default.

        Tables and the unused ``*_env`` / ``*_file`` forms of a secret are left out.
        """
        asked = list(dict.fromkeys(taken))
        given = set(self.by_path)
        prefixes = {p[:i] for p in [*asked, *given] for i, c in enumerate(p) if c in ".["}
        for path in asked:
            if path in given or path in prefixes:
                continue
            base, _, form = path.rpartition("_")
            if form in ("env", "file") and base.rpartition(".")[2] in SECRET_KEYS:
                continue
            self.defaults.append(path)

    def entries(self) -> list[tuple[str, str]]:
        """(key path, origin) for every value given or defaulted, given ones first."""
        return [*self.by_path.items(), *((path, "default") for path in self.defaults)]

    def suffix(self, problem: str) -> str:
        """A problem about a key given by a variable, naming that variable."""
        where = problem.partition(":")[0]
        origin = self.by_path.get(where, "")
        if not origin.startswith("env "):
            return problem
        return f"{problem} (from {origin})"


def _leaves(node: Any, base: str) -> Iterator[tuple[str, Any]]:
    """(key path, value) of every scalar or plain array under ``node``."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from _leaves(value, f"{base}.{key}" if base else str(key))
    elif isinstance(node, list) and node and all(isinstance(item, Mapping) for item in node):
        for index, item in enumerate(node):
            yield from _leaves(item, f"{base}[{index}]")
    elif base:
        yield base, node


def _literal(text: str) -> Any:
    """A TOML literal (42, true, "x", [1, 2]) or else the text itself."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def _steps(dotted: str) -> list[str | int]:
    """``routes[0].name`` as ``["routes", 0, "name"]``; empty when it is not a key path."""
    steps: list[str | int] = []
    for part in dotted.split("."):
        match = _SEGMENT.fullmatch(part)
        if match is None:
            return []
        steps.append(match.group(1))
        steps.extend(int(i) for i in re.findall(r"\[(\d+)\]", match.group(2)))
    return steps


def _dotted(steps: Iterable[str | int]) -> str:
    text = ""
    for step in steps:
        if isinstance(step, int):
            text += f"[{step}]"
        else:
            text += f".{step}" if text else step
    return text


def apply_overrides(
    tree: dict[str, Any],
    overrides: Iterable[str],
    problems: list[str],
    origins: Origins | None = None,
) -> None:
    """Apply ``section.key=value`` strings (``--set``) to a parsed TOML tree, in order."""
    for override in overrides:
        dotted, sep, raw = override.partition("=")
        dotted = dotted.strip()
        if not sep or not dotted:
            problems.append(f"--set {override}: expected section.key=value")
            continue
        steps = _steps(dotted)
        if not steps:
            problems.append(f"--set {dotted}: not a key path like section.key or routes[0].name")
            continue
        if _is_secret(steps):
            problems.append(
                f"--set {dotted}: secrets cannot be set on the command line; "
                f"use {steps[-1]}_env or {steps[-1]}_file in the config file"
            )
            continue
        error = _set(tree, steps, raw, origins, "--set")
        if error:
            problems.append(f"--set {dotted}: {error}")


def env_overrides(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """The ``CAMPAIGN_WRITER__*`` variables, as (name, value), sorted by name."""
    return sorted(
        (name, value)
        for name, value in environ.items()
        if name.upper().startswith(ENV_PREFIX) and len(name) > len(ENV_PREFIX)
    )


def apply_environment(
    tree: dict[str, Any],
    environ: Mapping[str, str],
    problems: list[str],
    origins: Origins | None = None,
) -> None:
    """Apply every ``CAMPAIGN_WRITER__SECTION__KEY=value`` variable to the tree."""
    for name, raw in env_overrides(environ):
        segments = name[len(ENV_PREFIX) :].lower().split("__")
        if not all(_ENV_SEGMENT.fullmatch(segment) for segment in segments) or (
            segments[0].isdigit()
        ):
            problems.append(
                f"{name}: not a key path; write CAMPAIGN_WRITER__SECTION__KEY, one '__'"
                " between segments (a number indexes an array: ROUTES__0__NAME)"
            )
            continue
        steps = _match_case(tree, [int(s) if s.isdigit() else s for s in segments])
        dotted = _dotted(steps)
        if _is_secret(steps):
            problems.append(
                f"{name}: secrets are not read from CAMPAIGN_WRITER__ variables; "
                f"set {dotted}_env (a variable's name) or {dotted}_file instead"
            )
            continue
        error = _set(tree, steps, raw, origins, f"env {name}")
        if error:
            problems.append(f"{dotted}: {error} (from {name})")


def _match_case(tree: Mapping[str, Any], steps: list[str | int]) -> list[str | int]:
    """The steps spelled as the tree spells its keys (``firstname`` -> ``firstName``),
    where the tree has them; variable names carry no case."""
    node: Any = tree
    matched: list[str | int] = []
    for step in steps:
        if isinstance(step, str) and isinstance(node, Mapping) and step not in node:
            step = next((key for key in node if str(key).lower() == step), step)
        matched.append(step)
        if isinstance(step, int):
            node = node[step] if isinstance(node, list) and step < len(node) else None
        else:
            node = node.get(step) if isinstance(node, Mapping) else None
    return matched


def _is_secret(steps: list[str | int]) -> bool:
    """Whether the key path ends at a secret (given only by its *_env / *_file forms)."""
    return isinstance(steps[-1], str) and steps[-1] in SECRET_KEYS


def _set(
    tree: dict[str, Any], steps: list[str | int], raw: str, origins: Origins | None, origin: str
) -> str | None:
    """Put ``raw`` (as a TOML literal, else text) at ``steps`` and note its origin; the
    problem when it cannot go there."""
    value = _literal(raw.strip())
    error = _assign(tree, steps, value)
    if error is None and origins is not None:
        origins.mark(_dotted(steps), value, origin)
    return error


def _assign(tree: dict[str, Any], steps: list[str | int], value: Any) -> str | None:
    node: Any = tree
    for step, following in itertools.pairwise(steps):
        if isinstance(step, int):
            if not isinstance(node, list) or step >= len(node):
                return f"there is no element [{step}]"
            node = node[step]
            continue
        if not isinstance(node, dict):
            return f"{step!r} is not inside a table"
        if step not in node:
            if isinstance(following, int):
                return f"there is no array {step!r}"
            node[step] = {}
        node = node[step]
    last = steps[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or last >= len(node):
            return f"there is no element [{last}]"
        node[last] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        return f"{last!r} is not inside a table"
    return None
