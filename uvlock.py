"""Bootstrap the uv that ``uv.lock`` pins, checked by the lock's own hashes.

``uv.lock`` is the project's one lock: every Python dependency, uv included (the ``dev``
group), with hashes. Installing uv by name alone would let a fresh machine get a different
uv than the one that wrote the lock, so this reads uv's version and hashes from the lock and
hands them to pip with ``--require-hashes``. Standard library only: it runs before anything
else is installed (``make install`` and the Dockerfile).

    python uvlock.py bootstrap DIR   # a venv at DIR holding exactly the locked uv
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

LOCK = Path(__file__).resolve().parent / "uv.lock"


def locked_requirement(name: str, lock: Path = LOCK) -> str:
    """``name==version --hash=...`` for every file the lock lists for ``name``."""
    packages = tomllib.loads(lock.read_text(encoding="utf-8"))["package"]
    matches = [p for p in packages if p["name"] == name]
    if len(matches) != 1:
        raise SystemExit(f"{lock.name}: expected one locked {name}, found {len(matches)}")
    package = matches[0]
    files = [*package.get("wheels", []), *([package["sdist"]] if "sdist" in package else [])]
    hashes = " ".join(f"--hash={f['hash']}" for f in files)
    if not hashes:
        raise SystemExit(f"{lock.name}: {name} has no hashes")
    return f"{name}=={package['version']} {hashes}"


def installed_uv_version(target: Path) -> str | None:
    """The version of the uv in ``target``, or None when there is none that runs."""
    uv = target / "bin" / "uv"
    if not uv.exists():
        return None
    result = subprocess.run([str(uv), "--version"], capture_output=True, text=True, check=False)
    return result.stdout.split()[1] if result.returncode == 0 and result.stdout else None


def bootstrap(target: Path) -> Path:
    """A venv at ``target`` with the locked uv (a no-op when it is already there)."""
    requirement = locked_requirement("uv")
    version = requirement.split()[0].split("==")[1]
    if installed_uv_version(target) == version:
        return target / "bin" / "uv"
    venv.EnvBuilder(with_pip=True, clear=True).create(target)
    requirements = target / "uv-requirements.txt"
    requirements.write_text(requirement + "\n", encoding="utf-8")
    pip = [str(target / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--require-hashes", "-r", str(requirements)], check=True)
    return target / "bin" / "uv"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    boot = sub.add_parser("bootstrap", help="a venv at DIR with the locked uv")
    boot.add_argument("dir", type=Path)
    sub.add_parser("requirement", help="print the locked uv as a hashed requirement")
    args = parser.parse_args(argv)
    if args.command == "bootstrap":
        print(bootstrap(args.dir.resolve()))
    else:
        print(locked_requirement("uv"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
