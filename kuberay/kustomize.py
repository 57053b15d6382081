"""A small, offline kustomize renderer for the tests (no kubectl needed).

Covers the features this repository's kustomizations use: ``resources`` (files and
directories), ``namespace``, ``patches`` (merge patches by file, JSON patches with a
``target``), ``configMapGenerator`` and ``secretGenerator`` (``files``, ``envs``,
``literals``), ``generatorOptions`` (labels; name
hashes must be disabled) and ``images``. A missing env file ``X`` falls back to ``X.example``
(the committed template), so the committed manifests validate without real secrets.

    python -m kuberay.kustomize k8s/infra     # print the rendered objects as YAML
"""

from __future__ import annotations

import base64
import copy
import sys
from pathlib import Path
from typing import Any

import jsonpatch
import yaml

CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
}

Obj = dict[str, Any]


def load_documents(path: Path) -> list[Obj]:
    with path.open(encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def _merge(base: Any, patch: Any) -> Any:
    """JSON merge patch (RFC 7386): what kustomize applies to custom resources."""
    if not isinstance(patch, dict) or not isinstance(base, dict):
        return copy.deepcopy(patch)
    out = dict(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge(base.get(key), value)
    return out


def _read_env_file(path: Path) -> dict[str, str]:
    if not path.exists():
        example = path.with_name(path.name + ".example")
        if not example.exists():
            raise FileNotFoundError(path)
        path = example
    data = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        data[key.strip()] = value
    return data


def _generate(kind: str, spec: Obj, base: Path, options: Obj) -> Obj:
    data: dict[str, str] = {}
    for entry in spec.get("files", []):
        key, _, rel = entry.partition("=") if "=" in entry else ("", "", entry)
        path = base / rel
        data[key or path.name] = path.read_text(encoding="utf-8")
    for env in spec.get("envs", []):
        data.update(_read_env_file(base / env))
    for literal in spec.get("literals", []):
        key, _, value = literal.partition("=")
        data[key] = value
    obj: Obj = {"apiVersion": "v1", "kind": kind, "metadata": {"name": spec["name"]}}
    labels = {**options.get("labels", {}), **spec.get("options", {}).get("labels", {})}
    if labels:
        obj["metadata"]["labels"] = labels
    if kind == "Secret":
        obj["type"] = spec.get("type", "Opaque")
        obj["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    else:
        obj["data"] = data
    return obj


def iter_containers(node: Any):
    """Every container dict at any depth (pods, templates, custom resources)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from (c for c in value if isinstance(c, dict))
            yield from iter_containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from iter_containers(item)


def split_image(image: str) -> tuple[str, str]:
    """'repo/name:tag' -> ('repo/name', 'tag'); tag '' when absent (digests kept in name)."""
    if "@" in image:
        return image, ""
    name, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:
        return image, ""
    return name, tag


def _apply_images(objects: list[Obj], images: list[Obj]) -> None:
    by_name = {entry["name"]: entry for entry in images}
    for obj in objects:
        for container in iter_containers(obj):
            name, tag = split_image(container.get("image", ""))
            entry = by_name.get(name)
            if entry is None:
                continue
            new_name = entry.get("newName", name)
            new_tag = str(entry.get("newTag", tag))
            container["image"] = f"{new_name}:{new_tag}" if new_tag else new_name


def _json_patch(objects: list[Obj], entry: dict[str, Any], directory: Path) -> None:
    """A JSON patch (RFC 6902) file applied to the one object its ``target`` names."""
    target = entry["target"]
    matches = [
        o
        for o in objects
        if o["kind"] == target["kind"] and o["metadata"]["name"] == target["name"]
    ]
    if len(matches) != 1:
        raise ValueError(f"patch {entry['path']} matches {len(matches)} objects")
    operations = yaml.safe_load((directory / entry["path"]).read_text(encoding="utf-8"))
    patched = jsonpatch.apply_patch(matches[0], operations)
    matches[0].clear()
    matches[0].update(patched)


def render(directory: Path) -> list[Obj]:
    directory = Path(directory)
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    objects: list[Obj] = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        objects.extend(render(path) if path.is_dir() else load_documents(path))

    options = kustomization.get("generatorOptions", {})
    generators = [("ConfigMap", g) for g in kustomization.get("configMapGenerator", [])]
    generators += [("Secret", g) for g in kustomization.get("secretGenerator", [])]
    if generators and not options.get("disableNameSuffixHash"):
        raise NotImplementedError("name suffix hashes are not rendered: disable them")
    objects.extend(_generate(kind, spec, directory, options) for kind, spec in generators)

    for patch_entry in kustomization.get("patches", []):
        if "target" in patch_entry:
            _json_patch(objects, patch_entry, directory)
            continue
        for patch in load_documents(directory / patch_entry["path"]):
            targets = [
                o
                for o in objects
                if o["kind"] == patch["kind"] and o["metadata"]["name"] == patch["metadata"]["name"]
            ]
            if len(targets) != 1:
                raise ValueError(f"patch {patch_entry['path']} matches {len(targets)} objects")
            merged = _merge(targets[0], patch)
            targets[0].clear()
            targets[0].update(merged)

    namespace = kustomization.get("namespace")
    if namespace:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = namespace
            for subject in obj.get("subjects", []) if obj["kind"].endswith("Binding") else []:
                if subject.get("kind") == "ServiceAccount":
                    subject["namespace"] = namespace
    _apply_images(objects, kustomization.get("images", []))
    return objects


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    for directory in args:
        yaml.safe_dump_all(render(Path(directory)), sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
