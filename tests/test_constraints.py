"""constraints.txt pins every dependency of pyproject.toml, inside its declared range.

`make install` installs under ``-c constraints.txt``; a dependency added to pyproject.toml
without `make lock` would be installed at whatever version the registry has that day, which
is what made earlier training runs impossible to reproduce across sessions.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def read_pins(path: Path) -> dict[str, Version]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        spec = list(req.specifier)
        assert len(spec) == 1 and spec[0].operator == "==", f"{path.name}: {line!r} is not an exact pin"
        pins[canonicalize_name(req.name)] = Version(spec[0].version)
    return pins


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs.extend(extra)
    return [Requirement(r) for r in reqs]


def problems(pins: dict[str, Version], reqs: list[Requirement]) -> list[str]:
    out = []
    for req in reqs:
        name = canonicalize_name(req.name)
        if name not in pins:
            out.append(f"{req.name}: not in constraints.txt (run `make lock`)")
        elif not req.specifier.contains(pins[name], prereleases=True):
            out.append(f"{req.name}: pinned {pins[name]} outside pyproject's {req.specifier}")
    return out


def test_every_dependency_is_pinned_inside_its_range():
    found = problems(read_pins(ROOT / "constraints.txt"), declared())
    assert not found, "\n".join(found)


def test_a_missing_pin_and_a_pin_outside_the_range_are_reported(tmp_path):
    bad = tmp_path / "constraints.txt"
    bad.write_text("# header\nnumpy==1.0\n")
    found = problems(read_pins(bad), [Requirement("numpy>=1.26"), Requirement("Pandas>=2.1")])
    assert len(found) == 2 and found[0].startswith("numpy: pinned 1.0") and "Pandas: not in" in found[1]


def test_the_makefile_installs_under_the_constraints():
    make = (ROOT / "Makefile").read_text()
    installs = [line for line in make.splitlines() if "$(PIP)" in line and "--no-deps" not in line]
    assert installs and all("-c constraints.txt" in line for line in installs), installs
