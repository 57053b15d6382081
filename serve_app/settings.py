"""The one place that reads environment variables.

The Serve application builders (``serve_app.app``) build :class:`Settings` once and pass it
to every deployment and consumer actor; runtime code never reads the environment itself,
and nothing builds an instance at import time. Tooling builds its own
(``devstack.config.app_settings()``). No address or name is written anywhere else.
"""

from __future__ import annotations

from urllib.parse import quote

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from serve_app.model.schema import TweetRules


class Settings(BaseSettings):
    """Defaults match the local stack started by ``make up``; override with env vars."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore")

    # Kafka (Apache Kafka 4.x, KRaft)
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_topic: str = "weather-tweets"
    kafka_dead_letter_topic: str = "weather-tweets-dlq"
    kafka_partitions: int = Field(default=4, ge=1)
    kafka_consumer_group: str = "weather-redis-counter"

    # RabbitMQ
    rabbitmq_host: str = "127.0.0.1"
    rabbitmq_port: int = 5672
    rabbitmq_user: str = "weather"
    rabbitmq_password: str = "weather-local"
    rabbitmq_vhost: str = "/"
    rabbitmq_exchange: str = "weather-tweets"
    rabbitmq_queue: str = "weather-tweets"
    rabbitmq_dead_letter_exchange: str = "weather-tweets-dlx"
    rabbitmq_dead_letter_queue: str = "weather-tweets-dlq"

    # Stores: Kafka drains into Redis, RabbitMQ into Valkey
    redis_host: str = "127.0.0.1"
    redis_port: int = 6379
    redis_password: str = ""
    valkey_host: str = "127.0.0.1"
    valkey_port: int = 6380
    valkey_password: str = ""

    # Tweet schema
    weather_values: str = "Lluvioso,Nubloso,Soleado"

    # Ingest (gateway and writers)
    max_body_bytes: int = Field(default=1_048_576, ge=1)
    max_batch_tweets: int = Field(default=1000, ge=1)
    max_json_depth: int = Field(default=8, ge=2)
    max_chunk_bytes: int = Field(default=262_144, ge=4096)
    publish_timeout_s: float = Field(default=5.0, gt=0)
    retry_after_s: int = Field(default=2, ge=1)
    stream_max_in_flight: int = Field(default=8, ge=1)  # frames per WebSocket being published

    # Admission control (README "Admission control"): refuse new tweets (503) before an
    # undrained backlog nears what a broker keeps. Kafka keeps 1 GiB per partition for 24 h
    # (devstack/servers/kafka.py; 896 MiB in k8s/infra/kafka.yaml); the whole lag may sit in
    # one partition (key = country), so the budget is under half of one partition's bytes.
    admission_kafka_max_bytes: int = Field(default=402_653_184, ge=1)  # 384 MiB < 896 MiB / 2
    admission_kafka_max_stall_s: float = Field(default=43_200, gt=0)  # half of 24 h retention
    admission_rabbitmq_max_bytes: int = Field(default=402_653_184, ge=1)  # below the alarms
    admission_resume_ratio: float = Field(default=0.8, gt=0, le=1)
    admission_stale_after_s: float = Field(default=30.0, gt=0)
    admission_poll_interval_s: float = Field(default=1.0, ge=1.0)

    # Consumers and store
    kafka_consumers: int = Field(default=1, ge=0)
    rabbit_consumers: int = Field(default=1, ge=0)
    consumer_batch_size: int = Field(default=100, ge=1)  # messages (chunks) per batch
    latest_tweets_length: int = Field(default=100, ge=1)
    seen_id_ttl_s: int = Field(default=172_800, ge=86_400)

    @property
    def rabbitmq_url(self) -> str:
        """AMQP URL with user, password and vhost escaped (any character may be in them)."""
        user, password, vhost = (
            quote(v, safe="")
            for v in (self.rabbitmq_user, self.rabbitmq_password, self.rabbitmq_vhost)
        )
        return f"amqp://{user}:{password}@{self.rabbitmq_host}:{self.rabbitmq_port}/{vhost}"

    @property
    def weathers(self) -> tuple[str, ...]:
        return tuple(w.strip() for w in self.weather_values.split(",") if w.strip())

    @property
    def tweet_rules(self) -> TweetRules:
        return TweetRules(self.weathers)
