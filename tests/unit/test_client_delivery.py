"""What each answer means for a batch's tweets (weather_client.delivery), no I/O."""

from __future__ import annotations

import grpc
import pytest
from weather_client.delivery import Accepted, Delivery, Refused, Retry, classify_answer
from weather_client.grpc import classify_status, refusals_in_details, to_message
from weather_client.retry import RetryPolicy
from weather_client.stream import _Connection, stream_url


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def tweets(n: int) -> list[dict[str, str]]:
    return [
        {"id": f"t{i}", "description": f"d{i}", "country": "GT", "weather": "Soleado"}
        for i in range(n)
    ]


def delivery(n: int, deadline_s: float = 60.0, clock: FakeClock | None = None) -> Delivery:
    policy = RetryPolicy(base_s=1.0, cap_s=4.0, deadline_s=deadline_s)
    return Delivery(tweets(n), policy, policy.deadline(clock or FakeClock()), lambda: 0.5)


def test_a_202_accepts_every_tweet_sent() -> None:
    d = delivery(3)
    d.sending()
    assert d.record(Accepted()) is None
    assert d.result.accepted == ["t0", "t1", "t2"] and not d.pending
    assert d.result.requests == 1 and d.result.retries == 0


def test_a_503_keeps_the_same_tweets_and_waits_retry_after_plus_jitter() -> None:
    d = delivery(3)
    first = [dict(t) for t in d.sending()]
    wait = d.record(Retry("503", "kafka: timed out", ["t0", "t1", "t2"], 2.0))
    assert wait == 2.0 + 0.5 * 1.0
    assert d.sending() == first  # same ids, same content
    assert d.record(Retry("503", "again", None, 2.0)) == 2.0 + 0.5 * 2.0
    d.sending()
    assert d.record(Accepted()) is None
    assert d.result.accepted == ["t0", "t1", "t2"]
    assert d.result.requests == 3 and d.result.retries == 2
    assert d.result.unavailable == 2


def test_a_503_naming_some_ids_retries_only_those() -> None:
    d = delivery(4)
    d.sending()
    d.record(Retry("503", "partly", ["t1", "t3", "not-ours"], 1.0))
    assert [t["id"] for t in d.pending] == ["t1", "t3"]
    assert d.result.accepted == ["t0", "t2"]


def test_a_503_naming_none_of_ours_retries_them_all() -> None:
    d = delivery(2)
    d.sending()
    d.record(Retry("503", "odd", ["someone-else"], 1.0))
    assert [t["id"] for t in d.pending] == ["t0", "t1"] and not d.result.accepted


def test_a_422_naming_items_refuses_them_and_sends_the_rest_again_at_once() -> None:
    d = delivery(4)
    d.sending()
    wait = d.record(Refused("422", "invalid tweet", {1: "country: bad", 3: "weather: bad"}))
    assert wait == 0.0
    assert [(r.id, r.status, r.reason) for r in d.result.refused] == [
        ("t1", "422", "country: bad"),
        ("t3", "422", "weather: bad"),
    ]
    assert [t["id"] for t in d.pending] == ["t0", "t2"]
    d.sending()
    assert d.record(Accepted()) is None
    assert d.result.accepted == ["t0", "t2"]
    assert d.result.retries == 0 and d.result.resends == 1


def test_a_4xx_naming_no_item_refuses_the_whole_batch_without_retry() -> None:
    d = delivery(3)
    d.sending()
    assert d.record(Refused("413", "body too large")) is None
    assert [r.id for r in d.result.refused] == ["t0", "t1", "t2"]
    assert {r.reason for r in d.result.refused} == {"body too large"}
    assert not d.pending and d.result.requests == 1


def test_a_retry_that_could_not_start_before_the_deadline_gives_up_naming_the_ids() -> None:
    clock = FakeClock()
    d = delivery(2, deadline_s=10.0, clock=clock)
    d.sending()
    assert d.record(Retry("503", "x", None, 2.0)) == 2.5
    clock.now = 8.0  # 2 s left, the next wait is 3 s
    d.sending()
    assert d.record(Retry("503", "x", None, 2.0)) is None
    assert d.result.not_accepted == ["t0", "t1"] and not d.pending
    assert not d.result.ok


def test_classify_answer_reads_the_pipeline_s_bodies() -> None:
    assert classify_answer(202, {"accepted": 2, "ids": ["a", "b"]}) == Accepted()
    retry = classify_answer(503, {"error": "kafka down; retry", "ids": ["a"]}, 2.0)
    assert retry == Retry("503", "kafka down; retry", ["a"], 2.0)
    assert classify_answer(502, "<html>bad gateway</html>") == Retry("502", "HTTP 502", None)
    refused = classify_answer(
        422,
        {
            "error": "invalid tweet: ...",
            "details": [
                {"loc": [0, "country"], "msg": "'ZZ' is not a code", "type": "value_error"},
                {"loc": [0, "weather"], "msg": "not one of", "type": "value_error"},
                {"loc": [2], "msg": "Input should be an object", "type": "model_type"},
                {"loc": ["weather"], "msg": "a single tweet's error", "type": "x"},
            ],
        },
    )
    assert refused == Refused(
        "422",
        "invalid tweet: ...",
        {0: "country: 'ZZ' is not a code; weather: not one of", 2: "Input should be an object"},
    )
    assert classify_answer(415, {"error": "Content-Type must be application/json"}) == Refused(
        "415", "Content-Type must be application/json"
    )


def test_grpc_statuses_map_like_http() -> None:
    assert classify_status(grpc.StatusCode.OK, "") == Accepted()
    for code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        assert isinstance(classify_status(code, "x"), Retry)
    assert classify_status(grpc.StatusCode.NOT_FOUND, "no app") == Refused("NOT_FOUND", "no app")
    details = "invalid tweet: [2, 'country']: 'ZZ' is not a code; [5, 'weather']: not one of A; B"
    refused = classify_status(grpc.StatusCode.INVALID_ARGUMENT, details)
    assert isinstance(refused, Refused)
    assert refused.by_index == {2: "country: 'ZZ' is not a code", 5: "weather: not one of A; B"}
    assert refusals_in_details("invalid tweet: country must be two letters") == {}


def test_a_grpc_tweet_with_a_field_the_proto_lacks_is_refused_before_sending() -> None:
    with pytest.raises(ValueError, match="colour"):
        to_message({"description": "d", "country": "GT", "weather": "Soleado", "colour": "red"})
    assert to_message({"id": "x", "description": "d", "country": "GT", "weather": "S"}).id == "x"


def test_stream_url_follows_the_rest_url() -> None:
    assert stream_url("http://127.0.0.1:8000") == "ws://127.0.0.1:8000/input/stream"
    assert stream_url("https://example.test/") == "wss://example.test/input/stream"
    with pytest.raises(ValueError):
        stream_url("127.0.0.1:8000")


async def test_stream_acknowledgements_answer_frames_in_order_and_a_loss_fails_the_rest() -> None:
    connection = _Connection(ws=None)  # type: ignore[arg-type]
    first, second, third = connection.expect(), connection.expect(), connection.expect()
    connection.acknowledge({"frame": 0, "status": 202, "accepted": 1, "ids": ["a"]})
    connection.acknowledge(
        {"frame": 1, "status": 503, "error": "down", "ids": ["b"], "retry_after": 2}
    )
    assert first.result() == Accepted()
    assert second.result() == Retry("503", "down", ["b"], 2.0)
    with pytest.raises(ValueError, match="frame 2"):
        connection.acknowledge({"frame": 7, "status": 202})
    fourth = connection.expect()
    connection.fail_all("ConnectionClosed", "gone")
    assert fourth.result() == Retry("ConnectionClosed", "gone")
    assert third.result().kind == "ProtocolError"  # never left waiting
    assert connection.lost
