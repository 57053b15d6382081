"""The Benthos config of the anchor: the same contract as our pipeline, on the same brokers.

``POST /input`` (one tweet or an array) is answered 202 only after every tweet of the
request was acknowledged by BOTH outputs (a ``fan_out`` broker):

* Kafka (``kafka_franz``): idempotent producer, which franz-go only runs with acks=all
  (its default, ``AllISRAcks``); keyed by country like ours. (The sarama ``kafka`` output
  refuses idempotence with more than one request in flight.)
* RabbitMQ (``amqp_0_9``): persistent delivery, mandatory flag, publisher confirms (the
  output always puts its channel in confirm mode and waits for each confirm), to a durable
  fanout exchange bound to a durable quorum queue, both created before the run.

Bad input (not JSON, not a tweet, a bad field anywhere in an array) is answered 400 and
reaches neither broker: the request is validated as a whole before an array is split into
one message per tweet. Everything listens on and connects to loopback only. The topic,
exchange and queue are the anchor's own, so nothing reaches our consumers or stores.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import yaml

if TYPE_CHECKING:
    from serve_app.settings import Settings

LOOPBACK = "127.0.0.1"
INPUT_PATH = "/input"
ACCEPTED_STATUS = "202"  # what tweets.lua counts as accepted, as our pipeline answers
REJECTED_STATUS = "400"
STATUS_META = "anchor_status"
ANCHOR_NAME = "bench-anchor-tweets"
REQUEST_TIMEOUT = "5s"  # our publish_timeout_s
ID_MAX_CHARS = 128  # serve_app's TweetId
DESCRIPTION_MAX_CHARS = 280
TWEET_FIELDS = ("id", "description", "country", "weather")


@dataclass(frozen=True)
class AnchorNames:
    """The anchor's own broker objects (never the pipeline's)."""

    topic: str = ANCHOR_NAME
    exchange: str = ANCHOR_NAME
    queue: str = ANCHOR_NAME


@dataclass(frozen=True)
class Ports:
    """Where Benthos listens: the ``/input`` server and its service API (``/ready``)."""

    input: int
    service: int


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``: the anchor never leaves the machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def kafka_seed_brokers(settings: Settings) -> list[str]:
    """The bootstrap list of our settings, refused unless every address is loopback."""
    brokers = [b.strip() for b in settings.kafka_bootstrap_servers.split(",") if b.strip()]
    for broker in brokers:
        if not is_loopback(broker.rsplit(":", 1)[0]):
            raise ValueError(f"the anchor only runs against loopback brokers, not {broker}")
    return brokers


def rabbitmq_url(settings: Settings) -> str:
    """Our AMQP URL (credentials escaped by Settings), refused unless it is loopback."""
    url = settings.rabbitmq_url
    if not is_loopback(urlsplit(url).hostname or ""):
        raise ValueError("the anchor only runs against a loopback RabbitMQ")
    return url


def check_names(settings: Settings, names: AnchorNames) -> None:
    """Refuse names that would feed our consumers (or their dead letters)."""
    ours = {
        settings.kafka_topic,
        settings.kafka_dead_letter_topic,
        settings.rabbitmq_exchange,
        settings.rabbitmq_queue,
        settings.rabbitmq_dead_letter_exchange,
        settings.rabbitmq_dead_letter_queue,
    }
    clash = ours & {names.topic, names.exchange, names.queue}
    if clash:
        raise ValueError(f"anchor names must not be the pipeline's: {sorted(clash)}")


def country_codes() -> list[str]:
    """ISO 3166-1 alpha-2 codes, as our schema accepts them (pycountry)."""
    import pycountry

    return sorted(c.alpha_2 for c in pycountry.countries)


def validation_mapping(weathers: tuple[str, ...], max_tweets: int, countries: list[str]) -> str:
    """Bloblang that turns a request into an array of normalised tweets or throws.

    Our schema's rules, as a Benthos user would write them: a JSON object or an array of
    1..max_tweets objects with only id (optional, 1-128 printable ASCII; a UUID when
    absent), description (1-280 characters), country (ISO alpha-2, upper-cased) and
    weather (a configured value, ASCII case-insensitive); plus ``accepted_at``.
    One bad tweet rejects the whole request, before anything is split or published.
    """
    weather_cases = "\n".join(
        f"    {json.dumps(w.lower())} => {json.dumps(w)}" for w in weathers if w.isascii()
    )
    return f"""map tweet {{
  let extra = this.keys().filter(k -> !{json.dumps(list(TWEET_FIELDS))}.contains(k))
  root = if $extra.length() > 0 {{ throw("unknown field: " + $extra.index(0)) }} else {{ {{}} }}
  root.id = if this.id == null {{ uuid_v4() }} else if this.id.type() == "string" && this.id.re_match("^[\\\\x21-\\\\x7e]{{1,{ID_MAX_CHARS}}}$") {{ this.id }} else {{ throw("id: 1-{ID_MAX_CHARS} printable ASCII characters") }}
  root.description = if this.description.type() == "string" && this.description.re_match("^(?s).{{1,{DESCRIPTION_MAX_CHARS}}}$") {{ this.description }} else {{ throw("description: 1-{DESCRIPTION_MAX_CHARS} characters") }}
  root.country = if this.country.type() == "string" && this.country.re_match("^[A-Za-z]{{2}}$") && {json.dumps(countries)}.contains(this.country.uppercase()) {{ this.country.uppercase() }} else {{ throw("country: an ISO 3166-1 alpha-2 code") }}
  root.weather = if this.weather.type() == "string" {{ match this.weather.lowercase() {{
{weather_cases}
    _ => throw("weather: one of {", ".join(weathers)}")
  }} }} else {{ throw("weather: one of {", ".join(weathers)}") }}
  root.accepted_at = now()
}}

let tweets = if this.type() == "array" {{ this }} else {{ [this] }}
root = if $tweets.length() < 1 || $tweets.length() > {max_tweets} {{ throw("1-{max_tweets} tweets per request") }} else {{ $tweets.map_each(t -> t.apply("tweet")) }}
"""  # noqa: E501


def _status_mapping(status: str, body: str) -> dict[str, Any]:
    """One small sync response per request (not one part per tweet), with its status."""
    return {
        "mapping": (
            f"root = if batch_index() == 0 {{ {body} }} else {{ deleted() }}\n"
            f'meta {STATUS_META} = "{status}"\n'
        )
    }


def kafka_output(settings: Settings, names: AnchorNames, max_in_flight: int) -> dict[str, Any]:
    """Idempotent franz-go producer (hence acks=all), keyed by country and uncompressed
    like ours (the same records, readable by any client)."""
    return {
        "kafka_franz": {
            "seed_brokers": kafka_seed_brokers(settings),
            "topic": names.topic,
            "key": '${! json("country") }',
            "idempotent_write": True,
            "compression": "none",  # as our producer (franz-go would pick snappy)
            "max_in_flight": max_in_flight,
            "timeout": REQUEST_TIMEOUT,
        }
    }


def amqp_output(settings: Settings, names: AnchorNames, max_in_flight: int) -> dict[str, Any]:
    """Persistent, mandatory, confirmed publishes to the anchor's durable exchange."""
    return {
        "amqp_0_9": {
            "urls": [rabbitmq_url(settings)],
            "exchange": names.exchange,
            "exchange_declare": {"enabled": False},  # created with its quorum queue
            "key": "",
            "content_type": "application/json",
            "persistent": True,
            "mandatory": True,
            "max_in_flight": max_in_flight,
            "timeout": REQUEST_TIMEOUT,
        }
    }


def anchor_config(
    settings: Settings,
    ports: Ports,
    *,
    names: AnchorNames | None = None,
    max_in_flight: int = 64,
) -> dict[str, Any]:
    """The whole Benthos config as a dict (``render`` writes it as YAML)."""
    names = names or AnchorNames()
    check_names(settings, names)
    mapping = validation_mapping(settings.weathers, settings.max_batch_tweets, country_codes())
    accepted = _status_mapping(ACCEPTED_STATUS, '{"accepted": batch_size()}')
    rejected = _status_mapping(REJECTED_STATUS, '{"error": error()}')
    return {
        "http": {"enabled": True, "address": f"{LOOPBACK}:{ports.service}"},
        "logger": {"level": "WARN", "format": "logfmt"},
        "input": {
            "http_server": {
                "address": f"{LOOPBACK}:{ports.input}",
                "path": INPUT_PATH,
                "allowed_verbs": ["POST"],
                "timeout": REQUEST_TIMEOUT,
                "sync_response": {
                    "status": f'${{! meta("{STATUS_META}") }}',
                    "headers": {"Content-Type": "application/json"},
                },
            }
        },
        "pipeline": {
            "processors": [{"try": [{"mapping": mapping}, {"unarchive": {"format": "json_array"}}]}]
        },
        "output": {
            "switch": {
                "cases": [
                    {
                        "check": "errored()",
                        "output": {"sync_response": {}, "processors": [rejected]},
                    },
                    {
                        "output": {
                            "broker": {
                                "pattern": "fan_out",
                                "outputs": [
                                    kafka_output(settings, names, max_in_flight),
                                    amqp_output(settings, names, max_in_flight),
                                    {"sync_response": {}, "processors": [accepted]},
                                ],
                            }
                        }
                    },
                ]
            }
        },
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the Bloblang) as literal blocks, so the file reads like a config."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render(config: dict[str, Any]) -> str:
    """YAML text of a config dict (what Benthos reads with ``-c``)."""
    return yaml.dump(config, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000)
