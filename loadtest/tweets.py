"""Seed-shaped tweets with unique ids, shared by Locust, the gRPC client and the probe.

Same mix as ``tweets.lua``: Central-American countries weighted roughly by population,
the three configured weathers, short Spanish descriptions.
"""

from __future__ import annotations

import itertools
import os
import random
import uuid

from devstack.config import app_settings

settings = app_settings()

COUNTRIES = ("GT", "HN", "SV", "NI", "CR", "PA", "BZ")
COUNTRY_WEIGHTS = (4, 3, 2, 2, 2, 2, 1)
PHRASES = (
    "Está lloviendo fuerte en la capital",
    "Amaneció nublado y fresco",
    "Qué calor, sol a pleno mediodía",
    "Tormenta eléctrica por la tarde",
    "Cielo despejado sobre el lago",
    "Llovizna y neblina en la montaña",
)


class TweetFactory:
    """Makes tweets whose ids are ``<tag>-<pid>-<factory>-<n>``: unique across processes,
    runs and factories, so a second run never reuses an id with other content (which the
    stores would refuse as a conflict)."""

    def __init__(self, tag: str | None = None, seed: int | None = None) -> None:
        self.tag = tag or uuid.uuid4().hex[:10]
        self._prefix = f"{self.tag}-{os.getpid()}-{uuid.uuid4().hex[:6]}-"
        self._counter = itertools.count(1)
        self._random = random.Random(seed)
        self._weathers = settings.weathers

    def one(self) -> dict[str, str]:
        n = next(self._counter)
        r = self._random
        return {
            "id": f"{self._prefix}{n}",
            "description": f"{r.choice(PHRASES)} #{n}",
            "country": r.choices(COUNTRIES, COUNTRY_WEIGHTS)[0],
            "weather": r.choice(self._weathers),
        }

    def many(self, count: int) -> list[dict[str, str]]:
        return [self.one() for _ in range(count)]
