"""Who may see recent tweet ids (``GET /stats?latest=``, the dashboard's snapshot).

A tweet id is what a client needs to take another client's tweet over (post other content
with that id), so ids are shown only to callers on this machine (loopback, and no proxy
header saying the request came from elsewhere) and to callers that present the dashboard's
credential: the Ray cluster's token (``Authorization: Bearer <token>``, the one the Ray
dashboard asks for), checked by Ray itself (``serve_app.runtime.ray_token_check``). Everyone
else gets the same counts and the latest tweets without their ids, and a note saying why
(never a silent drop).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Any

TokenCheck = Callable[[str], bool]
"""Whether an ``Authorization`` header carries the Ray cluster's token."""

IDS_HIDDEN = (
    "ids hidden: shown only to loopback callers and to callers with the Ray cluster's token "
    "('Authorization: Bearer <token>', docs/api.md)"
)
"""What a caller that may not see ids finds in place of them (``latest_ids``)."""

FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")
"""Headers a proxy adds: a request carrying one came from elsewhere, whatever its address."""


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` (the peer's address as the server saw it) is this machine."""
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:  # not an address (a Unix socket, a test client's name)
        return False


def may_see_ids(host: str | None, headers: Mapping[str, str], check: TokenCheck | None) -> bool:
    """Loopback callers that no proxy forwarded, and callers whose ``Authorization`` header
    ``check`` accepts (None: a cluster without token authentication, where nobody else
    can prove who they are)."""
    if is_loopback(host) and not any(name in headers for name in FORWARDING_HEADERS):
        return True
    authorization = headers.get("authorization", "")
    return check is not None and bool(authorization) and check(authorization)


def without_ids(stores: Mapping[str, Any]) -> dict[str, Any]:
    """Each store's section with its ``latest`` tweets stripped of their ids and a
    ``latest_ids`` note saying so; sections without ``latest`` (not asked for, a store
    that is down) are kept as they are."""
    shown: dict[str, Any] = {}
    for name, section in stores.items():
        if isinstance(section, Mapping) and "latest" in section:
            latest = [{k: v for k, v in tweet.items() if k != "id"} for tweet in section["latest"]]
            section = {**section, "latest": latest, "latest_ids": IDS_HIDDEN}
        shown[name] = section
    return shown
