"""Packaging: requirements.lock pins all that `make install` installs, within pyproject's ranges."""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
LOCK = ROOT / "requirements.lock"
MAKEFILE = (ROOT / "Makefile").read_text(encoding="utf-8")
PROJECT = canonicalize_name(PYPROJECT["project"]["name"])


def lock_pins() -> dict[str, str]:
    """{canonical name: version} of every ``name==version`` line of the lock."""
    pins: dict[str, str] = {}
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"not a pin: {line!r}"
            pins[canonicalize_name(name)] = version
    return pins


def make_install_extras() -> list[str]:
    """The extras `make install` asks for (the Makefile's EXTRAS)."""
    found = re.search(r"^EXTRAS := (\S+)$", MAKEFILE, re.MULTILINE)
    assert found is not None
    return found.group(1).split(",")


def project_requirements(extras: list[str]) -> list[Requirement]:
    """pyproject's dependencies and those of ``extras``, its own extras (``all``) unfolded."""
    wanted = list(extras)
    found = [Requirement(text) for text in PYPROJECT["project"]["dependencies"]]
    seen: set[str] = set()
    while wanted:
        extra = wanted.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in PYPROJECT["project"]["optional-dependencies"][extra]:
            requirement = Requirement(text)
            if canonicalize_name(requirement.name) == PROJECT:
                wanted.extend(requirement.extras)
            else:
                found.append(requirement)
    return found


def applies(requirement: Requirement, extras: set[str]) -> bool:
    """Whether the requirement's marker holds here, with the given extras asked for."""
    marker = requirement.marker
    if marker is None:
        return True
    return any(marker.evaluate({"extra": extra}) for extra in extras or {""})


def installed_closure(extras: list[str]) -> set[str]:
    """Every distribution the project with ``extras`` needs on this Python, as installed."""
    pending = [r for r in project_requirements(extras) if applies(r, set())]
    closure: set[str] = set()
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        key = name + "[" + ",".join(sorted(requirement.extras)) + "]"
        if key in closure:
            continue
        closure.add(key)
        for text in metadata.distribution(name).requires or []:
            needed = Requirement(text)
            if applies(needed, set(requirement.extras)):
                pending.append(needed)
    return {key.partition("[")[0] for key in closure}


def test_make_install_installs_the_lock_with_every_extra() -> None:
    """`make install` installs the project with every broker extra and the test and bench
    extras, constrained by requirements.lock."""
    assert set(make_install_extras()) == {"all", "test", "bench"}
    assert "-c $(LOCK) -e '.[$(EXTRAS)]'" in MAKEFILE
    assert "LOCK := requirements.lock" in MAKEFILE


def test_the_lock_pins_everything_make_install_installs() -> None:
    """Every distribution that the project and its extras need on this Python is pinned,
    is installed at its pin, and nothing else is pinned (on the Python the lock was made
    with)."""
    pins = lock_pins()
    closure = installed_closure(make_install_extras())
    assert closure - set(pins) == set(), "needed but not pinned (run make lock)"
    wrong = {
        name: (metadata.version(name), pins[name])
        for name in closure
        if metadata.version(name) != pins[name]
    }
    assert wrong == {}, "installed (left) is not the lock's version (right): make install"
    made_with = re.search(r"^# Resolved on Python (\d+\.\d+)\.", LOCK.read_text(), re.MULTILINE)
    assert made_with is not None
    if made_with.group(1) == f"{sys.version_info.major}.{sys.version_info.minor}":
        assert set(pins) - closure == set(), "pinned but needed by nothing (run make lock)"


def test_every_pin_is_within_the_ranges_pyproject_declares() -> None:
    """The lock's version of each direct dependency satisfies pyproject.toml's range."""
    pins = lock_pins()
    extras = list(PYPROJECT["project"]["optional-dependencies"])
    outside = [
        f"{requirement} (locked {pins[canonicalize_name(requirement.name)]})"
        for requirement in project_requirements(extras)
        if canonicalize_name(requirement.name) in pins
        and pins[canonicalize_name(requirement.name)] not in requirement.specifier
    ]
    assert outside == []


def test_each_broker_kind_names_its_extra_and_that_extra_s_modules() -> None:
    """sources.EXTRAS (what a missing client is reported by) matches pyproject: each kind's
    extra exists, is in `all`, and every distribution in it provides only modules the
    kind lists, so a missing one is named with the right extra."""
    from campaign_writer.sources import EXTRAS

    extras = PYPROJECT["project"]["optional-dependencies"]
    in_all = Requirement(extras["all"][0]).extras
    provides = metadata.packages_distributions()
    for kind, (extra, modules) in EXTRAS.items():
        assert extra in extras and extra in in_all, kind
        for text in extras[extra]:
            name = canonicalize_name(Requirement(text).name)
            top = {
                module
                for module, dists in provides.items()
                if name in {canonicalize_name(d) for d in dists} and not module.startswith("_")
            }
            assert top and top <= modules, (kind, name, top)
