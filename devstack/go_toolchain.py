"""The Go toolchain every build here runs (the cluster's binaries, the Benthos anchor).

``go_binary()`` is the one place that finds Go: the machine's (``$GO``, ``PATH``,
``/usr/local/go``), else the official toolchain fetched once from the Go module proxy (which
serves toolchains as the module ``golang.org/toolchain``) into ``.devstack/go/<version>``,
its h1 hash checked against the checksum database before anything is extracted.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

ROOT = Path(__file__).resolve().parents[1]

# k8s.io/kubernetes v1.36 needs Go >= 1.25; Debian's golang-go is older, so a machine
# without Go gets this official release (the module proxy serves it as a module).
GO_TOOLCHAIN = "go1.26.8"
TOOLCHAIN_MODULE = "golang.org/toolchain"
GO_HOME = ROOT / ".devstack" / "go"
LOCAL_GO = Path("/usr/local/go/bin/go")
COMPLETE_MARKER = ".devstack-complete"  # written last: a directory without it is redone
ARCHES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
DEFAULT_GOPROXY = "https://proxy.golang.org"
DEFAULT_GOSUMDB = "sum.golang.org"
LOOKUP_TIMEOUT_S = 30.0
FETCH_TIMEOUT_S = 900.0  # the whole zip (~72 MB); each read also times out on its own
READ_TIMEOUT_S = 30.0

Download = Callable[[str, BinaryIO, float], None]
"""``download(url, out, timeout_s)``: write the body of ``url`` into ``out`` or raise OSError."""


class ToolchainError(RuntimeError):
    """The Go toolchain could not be fetched or did not match the checksum database."""


MIN_GO = (1, 25)
"""The oldest Go the builds accept from the machine (k8s.io/kubernetes v1.36 needs it)."""


def installed_version(go: str) -> tuple[int, int] | None:
    """``(1, 26)`` for a go tool reporting go1.26.x (its own toolchain, not one it would
    switch to); None if it does not run."""
    try:
        out = subprocess.run(
            [go, "env", "GOVERSION"], capture_output=True, text=True, timeout=30,
            env={**os.environ, "GOTOOLCHAIN": "local"}, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.match(r"go(\d+)\.(\d+)", out.strip())
    return (int(found[1]), int(found[2])) if found else None


def find_installed_go() -> str | None:
    """A go tool available without downloading: ``$GO`` as it is; else ``go`` on PATH or
    /usr/local/go if at least :data:`MIN_GO` (Debian's golang-go is older); else a
    toolchain fetched earlier into ``.devstack/go``; None when there is none."""
    if explicit := os.environ.get("GO"):
        return explicit
    local = str(LOCAL_GO) if LOCAL_GO.is_file() and os.access(LOCAL_GO, os.X_OK) else None
    for found in (shutil.which("go"), local):
        if found and (installed_version(found) or (0, 0)) >= MIN_GO:
            return found
    fetched = toolchain_dir(GO_HOME)
    if (fetched / COMPLETE_MARKER).is_file():
        return str(fetched / "bin" / "go")
    return None


@functools.cache
def go_binary() -> str:
    """The go tool every build here runs: the machine's, else the toolchain fetched once."""
    return find_installed_go() or str(fetch_toolchain(GO_HOME))


def toolchain_dir(home: Path = GO_HOME, version: str = GO_TOOLCHAIN) -> Path:
    """Where the fetched toolchain ``version`` lives (its GOROOT; ``bin/go`` inside)."""
    return home / version


def go_platform(machine: str | None = None, system: str | None = None) -> str:
    """``linux-amd64`` and the like: the toolchain module's platform suffix for this machine."""
    machine = (machine or platform.machine()).lower()
    system = (system or platform.system()).lower()
    if machine not in ARCHES or system not in ("linux", "darwin"):
        raise ToolchainError(
            f"no Go toolchain is fetched for {system}/{machine}: install Go and set GO"
        )
    return f"{system}-{ARCHES[machine]}"


def goproxy_url() -> str:
    """The first entry of $GOPROXY that is a URL (Go's default when unset)."""
    value = os.environ.get("GOPROXY") or DEFAULT_GOPROXY
    for entry in re.split(r"[,|]", value):
        if "://" in entry:
            return entry.strip().rstrip("/")
    raise ToolchainError(f"GOPROXY={value!r} names no proxy URL to fetch Go from: set GO")


def gosumdb() -> tuple[str, str]:
    """The checksum database from $GOSUMDB as (name, URL); ``off`` is refused: an executable
    is never installed unverified."""
    value = (os.environ.get("GOSUMDB") or DEFAULT_GOSUMDB).strip()
    if value == "off":
        raise ToolchainError("GOSUMDB=off: the Go toolchain cannot be verified; set GO instead")
    fields = value.split()
    name = fields[0].split("+", 1)[0]
    url = fields[1] if len(fields) > 1 else f"https://{name}"
    return name, url.rstrip("/")


def h1_hash(files: Iterable[tuple[str, str]]) -> str:
    """Go's dirhash ``Hash1`` from (file name, sha256 hex of its content) pairs: sha256 over
    the sorted lines ``"<hex>  <name>\\n"``, base64, prefixed ``h1:``."""
    summary = hashlib.sha256()
    for name, digest in sorted(files):
        if "\n" in name:
            raise ToolchainError(f"file name with a newline: {name!r}")
        summary.update(f"{digest}  {name}\n".encode())
    return "h1:" + base64.b64encode(summary.digest()).decode()


def zip_h1(archive: BinaryIO | Path) -> str:
    """Go's ``dirhash.HashZip``: the h1 hash of every file of a module zip."""
    with zipfile.ZipFile(archive) as zf:
        return h1_hash((info.filename, _sha256(zf, info)) for info in zf.infolist())


def _sha256(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> str:
    digest = hashlib.sha256()
    with zf.open(info) as member:
        for chunk in iter(lambda: member.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def lookup_h1(module: str, version: str, download: Download) -> str:
    """The h1 hash of ``module@version`` that the checksum database records. Asked through
    the proxy (``<proxy>/sumdb/<name>/lookup/...``, as go does), then the database itself.
    The record is trusted as served over HTTPS: its Merkle proof is not checked here."""
    name, direct = gosumdb()
    path = f"lookup/{module}@{version}"
    errors = []
    for url in (f"{goproxy_url()}/sumdb/{name}/{path}", f"{direct}/{path}"):
        body = _get(url, download, LOOKUP_TIMEOUT_S, errors)
        if body is None:
            continue
        pattern = rf"^{re.escape(module)} {re.escape(version)} (h1:\S+)$"
        if found := re.search(pattern, body.decode(errors="replace"), re.M):
            return found.group(1)
        errors.append(f"{url}: no h1 line for {module} {version}")
    raise ToolchainError(f"checksum database lookup failed: {'; '.join(errors)}")


def _get(url: str, download: Download, timeout_s: float, errors: list[str]) -> bytes | None:
    """A small body, or None with the reason appended to ``errors``."""
    with tempfile.SpooledTemporaryFile() as out:
        try:
            download(url, out, timeout_s)
        except OSError as exc:
            errors.append(f"{url}: {exc}")
            return None
        out.seek(0)
        return out.read()


def http_download(url: str, out: BinaryIO, timeout_s: float) -> None:
    """GET ``url`` into ``out``: every read times out, and so does the whole transfer."""
    deadline = time.monotonic() + timeout_s
    request = urllib.request.Request(url, headers={"User-Agent": "weather-pipeline-devstack"})
    with urllib.request.urlopen(request, timeout=min(READ_TIMEOUT_S, timeout_s)) as response:
        for chunk in iter(lambda: response.read(1 << 20), b""):
            out.write(chunk)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url}: not downloaded within {timeout_s:.0f}s")


def fetch_toolchain(
    home: Path = GO_HOME,
    version: str = GO_TOOLCHAIN,
    goplatform: str | None = None,
    download: Download = http_download,
) -> Path:
    """``bin/go`` of the official toolchain ``version``, fetched once from the module proxy:
    downloaded to a temporary file, its h1 hash checked against the checksum database,
    extracted, made executable, marked complete. One fetch at a time (a file lock)."""
    target = toolchain_dir(home, version)
    if (target / COMPLETE_MARKER).is_file():
        return target / "bin" / "go"
    home.mkdir(parents=True, exist_ok=True)
    with _locked(home / ".fetch.lock"):
        if (target / COMPLETE_MARKER).is_file():  # fetched by whoever held the lock before us
            return target / "bin" / "go"
        module_version = f"v0.0.1-{version}.{goplatform or go_platform()}"
        expected = lookup_h1(TOOLCHAIN_MODULE, module_version, download)
        url = f"{goproxy_url()}/{TOOLCHAIN_MODULE}/@v/{module_version}.zip"
        print(f"fetching Go {version} into {target} (once; ~72 MB)", file=sys.stderr, flush=True)
        with tempfile.TemporaryFile(dir=home, prefix=f".{version}-") as archive:
            try:
                download(url, archive, FETCH_TIMEOUT_S)
            except OSError as exc:
                raise ToolchainError(f"downloading {url} failed: {exc}") from exc
            archive.seek(0)
            try:
                actual = zip_h1(archive)
            except zipfile.BadZipFile as exc:
                raise ToolchainError(f"{url} is not a zip: {exc}") from exc
            if actual != expected:
                raise ToolchainError(
                    f"{url} has hash {actual}, the checksum database says {expected}: refused"
                )
            shutil.rmtree(target, ignore_errors=True)  # a half extraction of a killed fetch
            archive.seek(0)
            _extract(archive, f"{TOOLCHAIN_MODULE}@{module_version}/", target)
        (target / COMPLETE_MARKER).write_text(f"{TOOLCHAIN_MODULE}@{module_version} {expected}\n")
    return target / "bin" / "go"


def _extract(archive: BinaryIO, prefix: str, target: Path) -> None:
    """Unpack the files under ``prefix`` into ``target``; module zips keep no file modes, so
    everything under bin/ and pkg/tool/ is made executable (as go does for toolchains)."""
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            relative = info.filename.removeprefix(prefix)
            parts = PurePosixPath(relative).parts
            if relative == info.filename or not parts or ".." in parts or relative[0] == "/":
                raise ToolchainError(f"unexpected file in the toolchain zip: {info.filename!r}")
            destination = target.joinpath(*parts)
            if info.is_dir():
                destination.mkdir(parents=True, exist_ok=True)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as source, destination.open("wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
            if parts[0] == "bin" or parts[:2] == ("pkg", "tool"):
                destination.chmod(0o755)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (another process waits for it)."""
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
