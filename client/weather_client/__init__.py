"""Reference client of the weather-tweet pipeline (importable without Ray or the server).

    from weather_client import Client

    with Client("http://127.0.0.1:8000") as client:
        result = client.send([{"description": "Está lloviendo", "country": "GT",
                               "weather": "Lluvioso"}])
    print(result.accepted, result.refused)

Every tweet gets an id before its first attempt, and every retry (503, 5xx, lost
connection, timeout) carries the same ids, so the stores count each tweet exactly once.
"""

from weather_client.client import AsyncClient, Client
from weather_client.errors import NotAccepted, TweetFileError, WeatherClientError
from weather_client.result import Refusal, SendResult
from weather_client.retry import RetryPolicy
from weather_client.tweets import batches, read_json_lines, with_id

__all__ = [
    "AsyncClient",
    "Client",
    "NotAccepted",
    "Refusal",
    "RetryPolicy",
    "SendResult",
    "TweetFileError",
    "WeatherClientError",
    "batches",
    "read_json_lines",
    "with_id",
]
