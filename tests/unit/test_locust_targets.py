"""Locust's gRPC users follow ``--host`` (loadtest/targets.py)."""

from __future__ import annotations

import pytest

from loadtest.targets import grpc_target

DEFAULT = "127.0.0.1:9000"


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        (None, DEFAULT),
        ("", DEFAULT),
        ("http://10.1.2.3:8000", "10.1.2.3:9000"),
        ("http://weather.example:8000/", "weather.example:9000"),
        ("https://weather.example", "weather.example:9000"),
        ("http://[fd00::7]:8000", "[fd00::7]:9000"),
        ("grpc://10.1.2.3:9100", "10.1.2.3:9100"),
        ("grpc://10.1.2.3", "10.1.2.3:9000"),
        ("10.1.2.3:9100", "10.1.2.3:9100"),
    ],
)
def test_grpc_users_go_to_the_host_of_host(host: str | None, expected: str) -> None:
    assert grpc_target(host, 9000, DEFAULT) == expected


def test_a_url_without_a_host_is_refused() -> None:
    with pytest.raises(ValueError, match="names no host"):
        grpc_target("http://:8000", 9000, DEFAULT)
