"""The committed gRPC stubs (the server's and the reference client's) are exactly what
grpcio-tools generates from proto/."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.protogen import TARGETS, StubTarget, generate


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.package)
def test_committed_stubs_match_a_fresh_generation(target: StubTarget, tmp_path: Path) -> None:
    generate(tmp_path, target)
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*.py*")}
    committed = {
        p.relative_to(target.root): p.read_bytes()
        for p in target.directory.rglob("*.py*")
        if p.name != "__init__.py" or p.parent != target.directory
    }
    assert fresh, "protoc generated nothing"
    assert fresh.keys() == committed.keys()
    for path, content in fresh.items():
        assert committed[path] == content, f"{path} is stale: run `make proto`"


def test_client_stubs_import_only_the_client_package() -> None:
    """The client's stubs must not reach into serve_app (the client installs without it)."""
    from serve_app.protogen import CLIENT

    for path in CLIENT.directory.rglob("*.py"):
        text = path.read_text()
        assert "from serve_app" not in text and "import serve_app" not in text, path


def test_both_stub_sets_load_in_one_process() -> None:
    """The copies register identical descriptors, so a process may import both (protobuf
    refuses a second, different file defining ``weather.v1.Tweet``)."""
    from weather_client.pb.weather.v1 import weather_pb2 as client_pb2

    from serve_app.pb.weather.v1 import weather_pb2 as server_pb2

    assert client_pb2.DESCRIPTOR.serialized_pb == server_pb2.DESCRIPTOR.serialized_pb
    wire = client_pb2.TweetBatch(tweets=[client_pb2.Tweet(id="a", country="GT")])
    assert server_pb2.TweetBatch.FromString(wire.SerializeToString()).tweets[0].id == "a"
