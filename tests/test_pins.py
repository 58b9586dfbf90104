"""The install is the one the pins describe: a fresh venv built by the README's commands
(and .ci/run) holds exactly the versions in constraints.txt, so no release upstream can
change what CI and the quickstart run."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not pinned with =="
            pins[_canonical(name)] = version
    return pins


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(spec: str) -> str:
    return _canonical(re.split(r"[\s\[<>=!~;]", spec, maxsplit=1)[0])


def test_every_dependency_is_pinned() -> None:
    pins = _pins()
    nurture = metadata.distribution("nurture")
    for spec in nurture.requires or []:
        assert _requirement_names(spec) in pins, f"{spec} has no pin in constraints.txt"


def test_installed_versions_are_the_pinned_ones() -> None:
    pins = _pins()
    wrong = []
    for dist in metadata.distributions():
        name = _canonical(dist.metadata["Name"])
        if name in pins and dist.version != pins[name]:
            wrong.append(f"{name} {dist.version} (pinned {pins[name]})")
    assert not wrong, "installed versions differ from constraints.txt: " + ", ".join(wrong)


def test_ci_and_readme_install_with_the_pins() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "-c constraints.txt" in ci
    readme = (ROOT / "README.md").read_text()
    installs = [line for line in readme.splitlines() if "pip install" in line and "-e" in line]
    assert installs and all("-c constraints.txt" in line for line in installs[:2])
