"""uv.lock is the one lock: what install, the image and CI use, and nothing resolves past it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

import uvlock

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
LOCK = tomllib.loads((ROOT / "uv.lock").read_text(encoding="utf-8"))
LOCKED = {p["name"]: p for p in LOCK["package"]}


def _pinned(requirement: str) -> tuple[str, str]:
    name, version = re.fullmatch(r"([\w.-]+)==([\w.!+-]+)", requirement).groups()
    return name, version


def test_every_locked_package_from_an_index_has_hashes() -> None:
    for name, package in LOCKED.items():
        if "registry" not in package["source"]:
            continue  # this project itself (editable)
        files = [*package.get("wheels", []), *([package["sdist"]] if "sdist" in package else [])]
        assert files and all(f["hash"].startswith("sha256:") for f in files), name


def test_the_lock_was_written_for_this_pyproject() -> None:
    project = LOCKED[PYPROJECT["project"]["name"]]
    locked = {r["name"] for r in project["metadata"]["requires-dist"]}
    wanted = {
        re.match(r"[\w.-]+", d).group(0)
        for d in [
            *PYPROJECT["project"]["dependencies"],
            *(d for extra in PYPROJECT["project"]["optional-dependencies"].values() for d in extra),
        ]
    }
    assert locked == wanted, "pyproject.toml changed without `make lock`"


def test_bootstrap_installs_the_uv_the_lock_pins() -> None:
    name, version = _pinned(PYPROJECT["dependency-groups"]["dev"][0])
    requirement = uvlock.locked_requirement("uv")
    assert requirement.startswith(f"uv=={version} --hash=sha256:")
    assert LOCKED["uv"]["version"] == version and name == "uv"


def test_build_backend_is_pinned_to_the_locked_setuptools() -> None:
    (constraint,) = PYPROJECT["tool"]["uv"]["build-constraint-dependencies"]
    name, version = _pinned(constraint)
    assert name == "setuptools" and LOCKED["setuptools"]["version"] == version


def test_grpcio_tools_generating_the_stubs_is_the_locked_one() -> None:
    from importlib.metadata import version

    assert version("grpcio-tools") == LOCKED["grpcio-tools"]["version"]
    stub = (ROOT / "serve_app/pb/weather/v1/weather_pb2_grpc.py").read_text(encoding="utf-8")
    assert f"GRPC_GENERATED_VERSION = '{LOCKED['grpcio-tools']['version']}'" in stub


def test_locked_requirement_refuses_an_unlocked_name(tmp_path: Path) -> None:
    lock = tmp_path / "uv.lock"
    lock.write_text('version = 1\n[[package]]\nname = "other"\nversion = "1"\n')
    with pytest.raises(SystemExit, match="expected one locked uv"):
        uvlock.locked_requirement("uv", lock)
