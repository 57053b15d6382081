"""The client's errors, under one root so an application can catch them all."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from weather_client.result import SendResult

SHOWN_IDS = 10


class WeatherClientError(Exception):
    """Root of every error this package raises."""


class TweetFileError(WeatherClientError, ValueError):
    """A JSON-lines input that cannot be sent, naming the source and line."""


class NotAccepted(WeatherClientError):
    """The deadline passed with tweets the pipeline has not accepted. Sending them again
    later with the same ids is safe: nothing is counted twice. ``result`` holds what was
    accepted and refused up to then."""

    def __init__(self, pending_ids: Sequence[str], result: SendResult, deadline_s: float) -> None:
        self.pending_ids = list(pending_ids)
        self.result = result
        self.deadline_s = deadline_s
        super().__init__(self._message())

    def _message(self) -> str:
        shown = ", ".join(self.pending_ids[:SHOWN_IDS])
        more = len(self.pending_ids) - SHOWN_IDS
        tail = f" (and {more} more)" if more > 0 else ""
        return (
            f"{len(self.pending_ids)} tweets not accepted within the deadline of "
            f"{self.deadline_s:g} s; send them again with the same ids: {shown}{tail}"
        )
