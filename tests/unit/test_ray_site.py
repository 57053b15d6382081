"""devstack/ray_site: the wildcard listeners of Serve become loopback, nothing else changes.

Offline: the adjustments run on Ray's real HAProxy template module and on a fake gRPC
server class; tests/stack/test_exposure.py checks the running stack.
"""

from __future__ import annotations

import importlib
import re
import sys
from types import ModuleType, SimpleNamespace

import pytest

from devstack.ray_site import sitecustomize as ray_site

BIND_LINE = re.compile(r"^\s*bind (\S+)", re.MULTILINE)


def bind_addresses(module: ModuleType) -> set[str]:
    """What every ``bind`` line of the module's string constants binds."""
    texts = [v for v in vars(module).values() if isinstance(v, str)]
    return {address for text in texts for address in BIND_LINE.findall(text)}


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("[::]:9500", "127.0.0.1:9500"),
        ("[::]:0", "127.0.0.1:0"),
        ("0.0.0.0:40001", "127.0.0.1:40001"),
        (":9101", "127.0.0.1:9101"),
        ("127.0.0.1:8500", "127.0.0.1:8500"),
        ("10.1.2.3:9000", "10.1.2.3:9000"),
        ("[::1]:9000", "[::1]:9000"),
    ],
)
def test_only_wildcard_hosts_become_loopback(address: str, expected: str) -> None:
    assert ray_site.loopback_address(address) == expected


def test_serve_haproxy_template_binds_nothing_on_every_interface() -> None:
    original = importlib.import_module("ray.serve._private.haproxy_templates")
    module = ModuleType("haproxy_templates_copy")
    module.__dict__.update({k: v for k, v in vars(original).items() if isinstance(v, str)})
    before = bind_addresses(module)
    assert any(b.startswith(("*:", ":")) for b in before), "Ray's template changed: recheck"

    ray_site.bind_haproxy_templates_to_loopback(module)

    after = bind_addresses(module)
    assert any(b.startswith("127.0.0.1:") for b in after)
    # what is left binds a configured host ({{ config.frontend_host }} ...) or loopback
    assert [b for b in after if not b.startswith(("{{", "127.0.0.1:"))] == []


def test_grpc_ports_added_on_a_wildcard_go_to_loopback() -> None:
    added: list[str] = []

    class Server:
        def add_insecure_port(self, address: str) -> int:
            added.append(address)
            return 1

        def add_secure_port(self, address: str, credentials: object) -> int:
            added.append(address)
            return 2

    ray_site.bind_grpc_servers_to_loopback(SimpleNamespace(Server=Server))
    server = Server()
    assert server.add_insecure_port("[::]:40000") == 1
    assert server.add_secure_port("[::]:0", object()) == 2
    server.add_insecure_port("127.0.0.1:9000")
    assert added == ["127.0.0.1:40000", "127.0.0.1:0", "127.0.0.1:9000"]


def test_the_hook_adjusts_a_module_as_it_loads(tmp_path, monkeypatch) -> None:
    (tmp_path / "listener_fixture.py").write_text("TEMPLATE = 'bind *:{{ port }}'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    finder = ray_site.AdjustOnImport(
        {"listener_fixture": ray_site.bind_haproxy_templates_to_loopback}
    )
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    monkeypatch.delitem(sys.modules, "listener_fixture", raising=False)

    module = importlib.import_module("listener_fixture")

    assert module.TEMPLATE == "bind 127.0.0.1:{{ port }}"
