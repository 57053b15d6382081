"""Generates the gRPC stubs from proto/ with grpcio-tools (``make proto``; a test checks no
drift): the server's in ``serve_app/pb`` and the reference client's in
``client/weather_client/pb``, each importing itself by its own package path, so the client
needs nothing of serve_app."""

from __future__ import annotations

import sys
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


def generate_package(package: str, out_dir: Path) -> None:
    """Run protoc so generated imports read ``<package>.weather.v1`` (importable anywhere
    the package is)."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    prefix = package.replace(".", "/")
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
    for package_dir in (out_dir / prefix).rglob("*"):
        if package_dir.is_dir() and not (package_dir / "__init__.py").exists():
            (package_dir / "__init__.py").write_text("")


def generate(out_dir: Path, target: StubTarget = SERVER) -> None:
    """One target's stubs under ``out_dir`` (its source root when run by ``make proto``)."""
    generate_package(target.package, out_dir)


def generate_all() -> None:
    """Both copies, each into its own source root."""
    for target in TARGETS:
        generate(target.root, target)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        generate(Path(sys.argv[1]))
    else:
        generate_all()
