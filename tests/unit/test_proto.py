"""The committed gRPC stubs are exactly what grpcio-tools generates from proto/."""

from __future__ import annotations

from pathlib import Path

from serve_app.protogen import ROOT, generate


def test_committed_stubs_match_a_fresh_generation(tmp_path: Path) -> None:
    generate(tmp_path)
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*.py*")}
    committed_root = ROOT / "serve_app" / "pb"
    committed = {
        p.relative_to(ROOT): p.read_bytes()
        for p in committed_root.rglob("*.py*")
        if p.name != "__init__.py" or p.parent != committed_root
    }
    assert fresh.keys() == committed.keys()
    for path, content in fresh.items():
        assert committed[path] == content, f"{path} is stale: run `make proto`"
