"""The Go toolchain fetch of devstack/go_toolchain.py, offline: Go's h1 dirhash (against
hashes the checksum database publishes), extraction from a fake proxy, the completion marker,
executable bits, and the refusal of a zip whose hash the database does not record."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import urllib.error
import zipfile
from pathlib import Path
from typing import BinaryIO

import pytest

from devstack import go_toolchain as build

VERSION = "go1.26.8"
MODULE_VERSION = "v0.0.1-go1.26.8.linux-amd64"
PREFIX = f"golang.org/toolchain@{MODULE_VERSION}/"
PROXY = "https://proxy.test/mod"
ZIP_URL = f"{PROXY}/golang.org/toolchain/@v/{MODULE_VERSION}.zip"
LOOKUP = f"lookup/golang.org/toolchain@{MODULE_VERSION}"
PROXIED_LOOKUP = f"{PROXY}/sumdb/sum.golang.org/{LOOKUP}"
DIRECT_LOOKUP = f"https://sum.golang.org/{LOOKUP}"
TOOLCHAIN_FILES = {
    "bin/go": b"#!/bin/sh\necho fake go\n",
    "bin/gofmt": b"fake gofmt",
    "pkg/tool/linux_amd64/compile": b"fake compile",
    "src/fmt/print.go": b"package fmt\n",
    "go.env": b"GOTOOLCHAIN=auto\n",
    "VERSION": b"go1.26.8\n",
}


def make_zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, content in files.items():
            zf.writestr(name, content)
    return buffer.getvalue()


def toolchain_zip(files: dict[str, bytes] = TOOLCHAIN_FILES) -> bytes:
    return make_zip({PREFIX + name: content for name, content in files.items()})


GO_MOD_H1 = "h1:8wlg68NqwW7eMnI1aABk/C2pDYXj8mrMY4TyRfiLeS0="  # sum.golang.org's record


def lookup_body(h1: str) -> bytes:
    """What the checksum database answers (the tree head is not checked)."""
    return (
        f"61743986\ngolang.org/toolchain {MODULE_VERSION} {h1}\n"
        f"golang.org/toolchain {MODULE_VERSION}/go.mod {GO_MOD_H1}\n"
        "\ngo.sum database tree\n61744056\nlygJPVk1GothwxHy0ttLmWqpQzSwa+CXOtLULeC/x1Y=\n"
    ).encode()


class FakeProxy:
    """A downloader serving fixed bodies; any other URL fails like an HTTP 404."""

    def __init__(self, bodies: dict[str, bytes]) -> None:
        self.bodies = bodies
        self.urls: list[str] = []

    def __call__(self, url: str, out: BinaryIO, timeout_s: float) -> None:
        assert 0 < timeout_s <= build.FETCH_TIMEOUT_S
        self.urls.append(url)
        if url not in self.bodies:
            raise urllib.error.HTTPError(url, 404, "Not Found", None, None)  # type: ignore[arg-type]
        out.write(self.bodies[url])


@pytest.fixture(autouse=True)
def go_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOPROXY", f"{PROXY},direct")
    monkeypatch.delenv("GOSUMDB", raising=False)


def test_h1_matches_a_published_module() -> None:
    """github.com/josharian/intern v1.0.0 (go.sum: h1:vlS4z54o...), from its files' digests."""
    files = {
        "README.md": "765bb4d9f32d0ec486ecdaf7e058fed482fa5f97c79dd15cdca083d75b897269",
        "go.mod": "b5027a67f5c127bb46b9ffac9d35a333b1df71cfc220e7196a7993e16a10a2b2",
        "intern.go": "7cd5951d4f018b20301a40794aea644ab3b39bfc7cab3d42544aaa6836ca6595",
        "intern_test.go": "76e58bc1852d388d30f39ad57e8b8c5f5ae2261b26082ac477fac97786a80daf",
        "license.md": "ad754e4f7d16f789dd0694828254cb4011928025b0d500339a5c4eded5a0c346",
    }
    pairs = [(f"github.com/josharian/intern@v1.0.0/{n}", d) for n, d in reversed(files.items())]
    assert build.h1_hash(pairs) == "h1:vlS4z54oSdjm0bgjRigI+G1HpF+tI+9rE5LLzOg8HmY="


def test_zip_h1_matches_the_toolchain_go_mod_record() -> None:
    """The database's own ``golang.org/toolchain <v>/go.mod`` line: one file named go.mod."""
    archive = io.BytesIO(make_zip({"go.mod": b"module golang.org/toolchain\n"}))
    assert build.zip_h1(archive) == GO_MOD_H1


def test_zip_h1_of_two_files_computed_independently() -> None:
    b_content, a_content = b"second\n", b"first\n"
    archive = io.BytesIO(make_zip({"m@v1/b.txt": b_content, "m@v1/a.txt": a_content}))
    summary = (
        f"{hashlib.sha256(a_content).hexdigest()}  m@v1/a.txt\n"
        f"{hashlib.sha256(b_content).hexdigest()}  m@v1/b.txt\n"
    )
    expected = "h1:" + base64.b64encode(hashlib.sha256(summary.encode()).digest()).decode()
    assert build.zip_h1(archive) == expected


def test_fetch_verifies_extracts_marks_and_makes_tools_executable(tmp_path: Path) -> None:
    archive = toolchain_zip()
    proxy = FakeProxy(
        {PROXIED_LOOKUP: lookup_body(build.zip_h1(io.BytesIO(archive))), ZIP_URL: archive}
    )
    go = build.fetch_toolchain(tmp_path, VERSION, "linux-amd64", proxy)
    root = tmp_path / VERSION
    assert go == root / "bin" / "go"
    assert proxy.urls == [PROXIED_LOOKUP, ZIP_URL]
    for name, content in TOOLCHAIN_FILES.items():
        assert (root / name).read_bytes() == content
    executable = {"bin/go", "bin/gofmt", "pkg/tool/linux_amd64/compile"}
    for name in TOOLCHAIN_FILES:
        assert os.access(root / name, os.X_OK) == (name in executable), name
    assert (root / build.COMPLETE_MARKER).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".fetch.lock", VERSION]  # no temp zip
    assert build.fetch_toolchain(tmp_path, VERSION, "linux-amd64", proxy) == go
    assert len(proxy.urls) == 2  # complete: nothing fetched again


def test_a_half_extracted_toolchain_is_fetched_again(tmp_path: Path) -> None:
    stale = tmp_path / VERSION / "bin"
    stale.mkdir(parents=True)
    (stale / "leftover").write_bytes(b"from a killed fetch")
    archive = toolchain_zip()
    proxy = FakeProxy(
        {DIRECT_LOOKUP: lookup_body(build.zip_h1(io.BytesIO(archive))), ZIP_URL: archive}
    )
    build.fetch_toolchain(tmp_path, VERSION, "linux-amd64", proxy)
    assert proxy.urls == [PROXIED_LOOKUP, DIRECT_LOOKUP, ZIP_URL]  # the database directly
    assert not (stale / "leftover").exists()
    assert (stale / "go").read_bytes() == TOOLCHAIN_FILES["bin/go"]


def test_a_zip_the_database_does_not_record_is_refused(tmp_path: Path) -> None:
    recorded = build.zip_h1(io.BytesIO(toolchain_zip()))
    tampered = toolchain_zip({**TOOLCHAIN_FILES, "bin/go": b"#!/bin/sh\nevil\n"})
    proxy = FakeProxy({PROXIED_LOOKUP: lookup_body(recorded), ZIP_URL: tampered})
    with pytest.raises(build.ToolchainError, match="refused"):
        build.fetch_toolchain(tmp_path, VERSION, "linux-amd64", proxy)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".fetch.lock"]


def test_no_record_in_the_database_is_refused(tmp_path: Path) -> None:
    proxy = FakeProxy({ZIP_URL: toolchain_zip()})
    with pytest.raises(build.ToolchainError, match="lookup failed"):
        build.fetch_toolchain(tmp_path, VERSION, "linux-amd64", proxy)
    assert ZIP_URL not in proxy.urls


def test_files_outside_the_module_prefix_are_refused(tmp_path: Path) -> None:
    archive = make_zip({PREFIX + "bin/go": b"go", PREFIX + "../escape": b"x"})
    proxy = FakeProxy(
        {PROXIED_LOOKUP: lookup_body(build.zip_h1(io.BytesIO(archive))), ZIP_URL: archive}
    )
    with pytest.raises(build.ToolchainError, match="unexpected file"):
        build.fetch_toolchain(tmp_path, VERSION, "linux-amd64", proxy)
    assert not (tmp_path / VERSION / build.COMPLETE_MARKER).exists()
    assert not (tmp_path / "escape").exists()


def test_goproxy_and_gosumdb_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOPROXY", "off|https://mirror.test/go/,https://proxy.golang.org")
    assert build.goproxy_url() == "https://mirror.test/go"
    monkeypatch.delenv("GOPROXY")
    assert build.goproxy_url() == "https://proxy.golang.org"
    monkeypatch.setenv("GOPROXY", "direct")
    with pytest.raises(build.ToolchainError, match="no proxy URL"):
        build.goproxy_url()
    assert build.gosumdb() == ("sum.golang.org", "https://sum.golang.org")
    monkeypatch.setenv("GOSUMDB", "sum.golang.org+033de0ae+Ac4zctda0e5eza https://sum.test/db/")
    assert build.gosumdb() == ("sum.golang.org", "https://sum.test/db")
    monkeypatch.setenv("GOSUMDB", "off")
    with pytest.raises(build.ToolchainError, match="cannot be verified"):
        build.gosumdb()


def test_platform_names() -> None:
    assert build.go_platform("x86_64", "Linux") == "linux-amd64"
    assert build.go_platform("aarch64", "Linux") == "linux-arm64"
    with pytest.raises(build.ToolchainError, match="set GO"):
        build.go_platform("riscv64", "Linux")


def test_installed_go_is_found_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local = tmp_path / "usr-local-go" / "bin" / "go"
    monkeypatch.setattr(build, "LOCAL_GO", local)
    monkeypatch.setattr(build, "GO_HOME", tmp_path / "fetched")
    monkeypatch.setattr(build.shutil, "which", lambda name: None)
    versions = {str(local): (1, 26), "/opt/bin/go": (1, 25), "/usr/bin/go": (1, 24)}
    monkeypatch.setattr(build, "installed_version", versions.get)
    monkeypatch.delenv("GO", raising=False)
    assert build.find_installed_go() is None
    fetched = tmp_path / "fetched" / VERSION
    (fetched / "bin").mkdir(parents=True)
    assert build.find_installed_go() is None  # not marked complete: not used
    (fetched / build.COMPLETE_MARKER).write_text("done\n")
    assert build.find_installed_go() == str(fetched / "bin" / "go")
    local.parent.mkdir(parents=True)
    local.write_bytes(b"")
    local.chmod(0o755)
    assert build.find_installed_go() == str(local)
    monkeypatch.setattr(build.shutil, "which", lambda name: "/usr/bin/go")
    assert build.find_installed_go() == str(local)  # Debian's go1.24 on PATH is too old
    monkeypatch.setattr(build.shutil, "which", lambda name: "/opt/bin/go")
    assert build.find_installed_go() == "/opt/bin/go"
    monkeypatch.setenv("GO", "/custom/go")
    assert build.find_installed_go() == "/custom/go"


def test_the_version_of_a_real_go_tool(tmp_path: Path) -> None:
    """What ``go env GOVERSION`` prints, read from a stand-in script; a tool that does not
    run has no version."""
    fake = tmp_path / "go"
    fake.write_text("#!/bin/sh\necho go1.24.4\n")
    fake.chmod(0o755)
    assert build.installed_version(str(fake)) == (1, 24)
    assert build.installed_version(str(tmp_path / "missing")) is None
