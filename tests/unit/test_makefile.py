"""`make help` names every target: each one carries a `## what it does` comment."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAKEFILES = [ROOT / "Makefile", ROOT / "loadtest" / "loadtest.mk"]
TARGET = re.compile(r"^([a-z][a-z-]*):(?!=)", re.M)


def declared_targets() -> set[str]:
    return {m.group(1) for path in MAKEFILES for m in TARGET.finditer(path.read_text())}


def test_help_lists_every_target_with_its_description() -> None:
    shown = subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), "help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    listed = {line.split()[0]: line for line in shown.splitlines() if line.strip()}
    targets = declared_targets()
    assert targets and targets == set(listed), targets ^ set(listed)
    assert all(len(line.split(None, 1)) == 2 for line in listed.values())


def test_phony_targets_exist() -> None:
    text = (ROOT / "Makefile").read_text()
    phony = set(re.search(r"^\.PHONY:((?:.*\\\n)*.*)$", text, re.M).group(1).split()) - {"\\"}
    assert phony <= declared_targets(), phony - declared_targets()
