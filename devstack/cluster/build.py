"""Build the cluster's Go binaries once and keep them in ``.devstack/cluster/bin``.

Kubernetes cannot be ``go install``-ed (its go.mod replaces every staging module with a
local directory), so a wrapper module requires ``k8s.io/kubernetes`` and replaces each
staging module with its published ``v0.Y.Z`` release instead. KWOK and the KubeRay operator
have no replaces and install directly. A binary that exists is never rebuilt.

The go tool itself comes from :func:`devstack.go_toolchain.go_binary`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from devstack.go_toolchain import go_binary

ROOT = Path(__file__).resolve().parents[2]
HOME = ROOT / ".devstack" / "cluster"
BIN = HOME / "bin"

KUBERNETES_VERSION = "v1.36.3"
KWOK_VERSION = "v0.8.0"
# The newest ray-operator whose module zip the Go proxy serves (v1.7.0's is refused).
KUBERAY_VERSION = "v1.6.0"
KUBERAY_MODULE = "github.com/ray-project/kuberay/ray-operator"
KUBERNETES_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
# The real node (devstack/cluster/node.py): same module, same version as the control plane.
NODE_COMMANDS = ("kubelet", "kube-proxy")
# crictl and CoreDNS have replace-free modules but need `go get` of the command package
# (go.sum entries), so each builds in a throwaway module of its own.
CRI_TOOLS_VERSION = "v1.36.0"
COREDNS_VERSION = "v1.14.7"
WRAPPED = {
    "crictl": ("sigs.k8s.io/cri-tools/cmd/crictl", CRI_TOOLS_VERSION),
    "coredns": ("github.com/coredns/coredns", COREDNS_VERSION),
}
# Staging modules the proxy does not serve and no command above imports.
UNPUBLISHED = {"k8s.io/sample-cli-plugin"}


def versioned(name: str, version: str) -> Path:
    """Binary path with its version in the name, so a version bump builds anew."""
    return BIN / f"{name}-{version}"


def binary(name: str) -> Path:
    """Path of one cluster binary (kube-*, kubectl, kwok, ray-operator)."""
    if name in KUBERNETES_COMMANDS or name in NODE_COMMANDS:
        return versioned(name, KUBERNETES_VERSION)
    if name in WRAPPED:
        return versioned(name, WRAPPED[name][1])
    return versioned(name, KWOK_VERSION if name == "kwok" else KUBERAY_VERSION)


def go(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run the go tool (module proxy only; CGO off: static binaries, no C toolchain);
    raise with its output when it fails."""
    full_env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod", **(env or {})}
    result = subprocess.run(
        [go_binary(), *args], cwd=cwd, env=full_env, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"go {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def module_dir(module: str, version: str) -> Path:
    """Download a module (cached by Go) and return its directory."""
    return Path(json.loads(go(["mod", "download", "-json", f"{module}@{version}"], HOME))["Dir"])


def staging_modules(kubernetes_go_mod: str) -> list[str]:
    """Staging modules that kubernetes' go.mod replaces with ./staging/src/...."""
    found = re.findall(r"^\s*(k8s\.io/[\w.-]+)\s+=>\s+\./staging/", kubernetes_go_mod, re.M)
    return [m for m in found if m not in UNPUBLISHED]


def wrapper_go_mod(kubernetes_go_mod: str, version: str) -> str:
    """go.mod requiring k8s.io/kubernetes with every staging module at its v0 release."""
    staging = "v0." + version.removeprefix("v1.")
    go_line = re.search(r"^go\s+(\S+)", kubernetes_go_mod, re.M)
    lines = [
        "module weather-pipeline/cluster-tools",
        "",
        f"go {go_line.group(1) if go_line else '1.26'}",
        "",
        f"require k8s.io/kubernetes {version}",
        "",
        "replace (",
        *(f"\t{m} => {m} {staging}" for m in staging_modules(kubernetes_go_mod)),
        ")",
        "",
    ]
    return "\n".join(lines)


def version_ldflags(version: str) -> str:
    """-X flags so servers report e.g. v1.36.3 (kubectl cannot parse the unstamped one)."""
    major, minor = version.removeprefix("v").split(".")[:2]
    stamps = {"gitVersion": version, "gitMajor": major, "gitMinor": minor}
    stamps |= {"gitTreeState": "clean", "buildDate": "1970-01-01T00:00:00Z"}
    flags = ["-s", "-w"]
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {package}.{key}={value}" for key, value in stamps.items()]
    return " ".join(flags)


def build_kubernetes(
    version: str = KUBERNETES_VERSION, commands: tuple[str, ...] = KUBERNETES_COMMANDS
) -> None:
    """Commands of k8s.io/kubernetes (default: the control plane and kubectl), if missing."""
    missing = [c for c in commands if not versioned(c, version).exists()]
    if not missing:
        return
    work = HOME / f"kubernetes-{version}"
    work.mkdir(parents=True, exist_ok=True)
    source = module_dir("k8s.io/kubernetes", version)
    (work / "go.mod").write_text(wrapper_go_mod((source / "go.mod").read_text(), version))
    packages = [f"k8s.io/kubernetes/cmd/{c}" for c in missing]
    go(["get", *(f"{p}@{version}" for p in packages)], cwd=work)
    out = work / "out"
    go(
        ["build", "-trimpath", "-ldflags", version_ldflags(version), "-o", f"{out}/", *packages],
        work,
    )
    for command in missing:
        _install(out / command, versioned(command, version))


def go_install(package: str, version: str, name: str) -> None:
    """``go install package@version`` into a private GOBIN, then keep it as BIN/name-version."""
    target = versioned(name, version)
    if target.exists():
        return
    gobin = HOME / "gobin"
    go(
        ["install", "-trimpath", "-ldflags", "-s -w", f"{package}@{version}"],
        HOME,
        {"GOBIN": str(gobin)},
    )
    _install(gobin / package.rsplit("/", 1)[-1], target)


def build_wrapped(name: str) -> Path:
    """crictl or coredns: ``go get`` the command package into a throwaway module, build it."""
    package, version = WRAPPED[name]
    target = versioned(name, version)
    if target.exists():
        return target
    work = HOME / f"{name}-{version}"
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "go.mod").exists():
        go(["mod", "init", f"weather-pipeline/{name}"], work)
    go(["get", f"{package}@{version}"], work)
    out = work / "out" / name
    go(["build", "-trimpath", "-ldflags", "-s -w", "-o", str(out), package], work)
    _install(out, target)
    return target


def pause_source(version: str = KUBERNETES_VERSION) -> Path:
    """Kubernetes' own pause.c (the sandbox image's only program), from the module."""
    target = HOME / f"pause-{version}.c"
    if not target.exists():
        HOME.mkdir(parents=True, exist_ok=True)
        source = module_dir("k8s.io/kubernetes", version) / "build/pause/linux/pause.c"
        partial = target.with_name(target.name + ".partial")
        shutil.copyfile(source, partial)
        partial.replace(target)
    return target


def build_node() -> dict[str, Path]:
    """Everything the real node runs besides Debian's packages; cached like the rest."""
    HOME.mkdir(parents=True, exist_ok=True)
    build_kubernetes(commands=NODE_COMMANDS)
    for name in WRAPPED:
        build_wrapped(name)
    pause_source()
    return {name: binary(name) for name in (*NODE_COMMANDS, *WRAPPED)}


def _install(built: Path, target: Path) -> None:
    """Move a fresh binary into place atomically (a killed build leaves no half file)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    shutil.copy2(built, partial)
    partial.replace(target)
    built.unlink()


def _cached_copy(source: Path, name: str) -> Path:
    """Keep a copy of a module directory under HOME, so later runs need no module cache."""
    target = HOME / name
    if not target.exists():
        partial = HOME / f"{name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(source, partial)
        partial.replace(target)
    return target


def kuberay_crds(version: str = KUBERAY_VERSION) -> list[Path]:
    """The operator's own CRDs (all four: it watches every kind at start)."""
    target = HOME / f"kuberay-crds-{version}"
    if not target.exists():
        source = module_dir(KUBERAY_MODULE, version) / "config" / "crd" / "bases"
        target = _cached_copy(source, target.name)
    return sorted(target.glob("*.yaml"))


# KWOK's own stage definitions (the ones kwokctl installs): nodes become Ready and keep a
# lease, Pods run (init containers complete), PVCs of the kwok-volume StorageClass bind.
KWOK_STAGES = (
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-complete.yaml",
    "pod/fast/pod-delete.yaml",
    "volume/fast/pv-bind.yaml",
    "volume/fast/pv-delete.yaml",
    "volume/fast/pvc-provision.yaml",
    "volume/fast/pvc-delete.yaml",
)
KWOK_STORAGE_CLASS = "volume/fast/storage-class.yaml"


def kwok_file(relative: str) -> Path:
    """A file of KWOK's kustomize/stage directory (copied from the module source once)."""
    target = HOME / f"kwok-stages-{KWOK_VERSION}"
    if not target.exists():
        source = module_dir("sigs.k8s.io/kwok", KWOK_VERSION) / "kustomize" / "stage"
        target = _cached_copy(source, target.name)
    return target / relative


def build_all() -> dict[str, Path]:
    """Everything the cluster test runs; a second call builds and downloads nothing."""
    HOME.mkdir(parents=True, exist_ok=True)
    build_kubernetes()
    go_install("sigs.k8s.io/kwok/cmd/kwok", KWOK_VERSION, "kwok")
    go_install(KUBERAY_MODULE, KUBERAY_VERSION, "ray-operator")
    kuberay_crds()
    kwok_file(KWOK_STORAGE_CLASS)
    names = [*KUBERNETES_COMMANDS, "kwok", "ray-operator"]
    return {name: binary(name) for name in names}
