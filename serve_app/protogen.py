"""Generates the gRPC stubs from proto/ with grpcio-tools (``make proto``; a test checks no
drift): the server's in ``serve_app/pb`` and the reference client's in
``client/weather_client/pb``, each importing itself by its own package path, so the client
needs nothing of serve_app.

Both copies register the same descriptors under the same file name
(``serve_app/pb/weather/v1/weather.proto``): protobuf's default pool accepts an identical
file twice but refuses a second file defining ``weather.v1.Tweet`` again, and a process may
load both copies (the tests do; so may an application that embeds the client).
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PROTO_FILES = sorted(p.relative_to(PROTO_DIR) for p in PROTO_DIR.rglob("*.proto"))


@dataclass(frozen=True)
class StubTarget:
    """Where one copy of the stubs lives: ``package`` (dotted) under the source ``root``."""

    root: Path
    package: str

    @property
    def package_path(self) -> Path:
        return Path(*self.package.split("."))

    @property
    def directory(self) -> Path:
        return self.root / self.package_path


SERVER = StubTarget(ROOT, "serve_app.pb")
CLIENT = StubTarget(ROOT / "client", "weather_client.pb")
TARGETS = (SERVER, CLIENT)
REGISTERED_PACKAGE = SERVER.package
"""The package path the descriptors' file name is built from, the same in every copy."""


def run_protoc(out_dir: Path) -> None:
    """protoc as the server's package: files under ``out_dir/serve_app/pb``."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    prefix = REGISTERED_PACKAGE.replace(".", "/")
    args = [
        "protoc",
        f"-I{prefix}={PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(f"{prefix}/{p}" for p in PROTO_FILES),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def _alias(package: str) -> str:
    """How grpcio-tools spells a package inside its import aliases."""
    return package.replace("_", "__").replace(".", "_dot_") + "_dot_"


def relocated(text: str, package: str) -> str:
    """Generated code made to import itself from ``package`` (Python names only: the
    registered file name in the serialized descriptor is left as it is)."""
    if package == REGISTERED_PACKAGE:
        return text
    text = text.replace(f"{REGISTERED_PACKAGE}.", f"{package}.")
    return text.replace(_alias(REGISTERED_PACKAGE), _alias(package))


def generate(out_dir: Path, target: StubTarget = SERVER) -> None:
    """One target's stubs under ``out_dir`` (its source root when run by ``make proto``)."""
    with tempfile.TemporaryDirectory() as scratch:
        run_protoc(Path(scratch))
        generated = Path(scratch, *REGISTERED_PACKAGE.split("."))
        for source in sorted(generated.rglob("*.py*")):
            destination = out_dir / target.package_path / source.relative_to(generated)
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_text(relocated(source.read_text(), target.package))
    for package_dir in (out_dir / target.package_path).rglob("*"):
        if package_dir.is_dir() and not (package_dir / "__init__.py").exists():
            (package_dir / "__init__.py").write_text("")


def generate_all() -> None:
    """Both copies, each into its own source root."""
    for target in TARGETS:
        generate(target.root, target)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        generate(Path(sys.argv[1]))
    else:
        generate_all()
