"""``weather.v1.Publisher/PublishBatch`` over grpc.aio (the Serve gRPC proxy, port 9000).

Status codes mirror the REST answers: OK is a 202; UNAVAILABLE (the pipeline's 503) and
the other codes of a failure on the way (a deadline, a reset stream, a proxy without a
replica) are retried with the same ids; INVALID_ARGUMENT and every other code that says
the request itself is wrong refuse the batch: the items its details name by index (the
rest are sent again), or all of it when none is named.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import grpc

from weather_client.delivery import Accepted, Outcome, Refused, Retry
from weather_client.pb.weather.v1 import weather_pb2, weather_pb2_grpc
from weather_client.tweets import Tweet

DEFAULT_TARGET = "127.0.0.1:9000"
DEFAULT_APPLICATION = "ingest"
"""The Serve application that serves ``weather.v1.Publisher`` (the ``application`` metadata)."""
RETRIED_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
    }
)
"""Failures on the way, not verdicts on the tweets: safe to retry, the ids make it so."""
PROTO_FIELDS = ("id", "description", "country", "weather")
ITEM_ERROR = re.compile(r"\[(\d+)(?:, '([^']*)')?\]: ")
"""Where one problem starts in INVALID_ARGUMENT details: ``[index, 'field']: message``."""


def to_message(tweet: Tweet) -> weather_pb2.Tweet:
    """The proto tweet; a field the proto lacks is refused here, as REST refuses it."""
    unknown = set(tweet) - set(PROTO_FIELDS)
    if unknown:
        raise ValueError(f"unknown tweet fields {sorted(unknown)}; a tweet has {PROTO_FIELDS}")
    fields = {name: tweet[name] for name in PROTO_FIELDS if name in tweet}
    if not all(isinstance(v, str) for v in fields.values()):
        raise ValueError("every tweet field is a string")
    return weather_pb2.Tweet(**fields)


def invalid_fields(tweets: Sequence[Tweet]) -> dict[int, str]:
    """Tweets that cannot even be put in a proto message, by index, with why."""
    found: dict[int, str] = {}
    for index, tweet in enumerate(tweets):
        try:
            to_message(tweet)
        except (ValueError, TypeError) as exc:
            found[index] = str(exc)
    return found


def refusals_in_details(details: str) -> dict[int, str]:
    """The items a batch's INVALID_ARGUMENT names (``[2, 'country']: 'ZZ' is not ...;
    [5, 'weather']: ...``), by index. Details are bounded in size, so later items may be
    missing: those are sent again and, if bad, refused by the next answer."""
    found: dict[int, list[str]] = {}
    matches = list(ITEM_ERROR.finditer(details))
    if not matches:
        return {}
    ends = [m.start() for m in matches[1:]] + [len(details)]
    for match, end in zip(matches, ends, strict=True):
        message = details[match.end() : end].strip().rstrip(";").strip()
        field = match.group(2)
        found.setdefault(int(match.group(1)), []).append(
            f"{field}: {message}" if field else message
        )
    return {index: "; ".join(messages) for index, messages in found.items()}


def classify_status(code: grpc.StatusCode, details: str) -> Outcome:
    if code == grpc.StatusCode.OK:
        return Accepted()
    if code in RETRIED_CODES:
        return Retry(code.name, details or code.name)
    by_index = refusals_in_details(details) if code == grpc.StatusCode.INVALID_ARGUMENT else {}
    return Refused(code.name, details or code.name, by_index)


class GrpcTransport:
    """Sends batches with ``PublishBatch`` on one channel to ``target``."""

    def __init__(self, target: str = DEFAULT_TARGET, application: str = DEFAULT_APPLICATION):
        self.channel = grpc.aio.insecure_channel(target)
        self.stub = weather_pb2_grpc.PublisherStub(self.channel)
        self.metadata = (("application", application),)

    async def send(self, tweets: Sequence[Tweet], timeout_s: float) -> Outcome:
        invalid = invalid_fields(tweets)
        if invalid:
            return Refused("INVALID_ARGUMENT", "invalid tweet", invalid)
        batch = weather_pb2.TweetBatch(tweets=[to_message(t) for t in tweets])
        try:
            await self.stub.PublishBatch(batch, metadata=self.metadata, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            return classify_status(exc.code(), exc.details() or "")
        return Accepted()

    async def aclose(self) -> None:
        await self.channel.close()
