"""tests/tls/: servers of their own (TLS, SASL, ACL users) on their own ports and folders,
started and stopped by the tests themselves: the shared stack is neither needed nor touched."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _servers_unless_offline() -> None:
    """Overrides the stack fixture of tests/conftest.py: nothing here uses the stack."""
