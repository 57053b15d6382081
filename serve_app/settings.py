"""The one place that reads environment variables.

The Serve application builders (``serve_app.app``) build :class:`Settings` once and pass it
to every deployment and consumer actor; runtime code never reads the environment itself,
and nothing builds an instance at import time. Tooling builds its own
(``devstack.config.app_settings()``). No address or name is written anywhere else.

Passwords are :class:`~pydantic.SecretStr` (never in a repr, a log line or an error); an
unknown key passed explicitly (Serve ``args:``) is refused by name; a TLS file that does not
exist, or a SASL protocol without a mechanism, fails at start-up. :func:`tls_context` is
the one builder of a client TLS context; each broker and store module calls it with its
own settings.
"""

from __future__ import annotations

import hashlib
import json
import ssl
from pathlib import Path
from typing import Literal, Self
from urllib.parse import quote

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from serve_app.errors import ConfigError
from serve_app.model.schema import TweetRules

KafkaSecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
KafkaSaslMechanism = Literal["", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
TLS_FILE_SUFFIXES = ("_ssl_cafile", "_ssl_certfile", "_ssl_keyfile")
MIN_FINGERPRINT_KEY_CHARS = 32


def tls_context(
    cafile: str = "", certfile: str = "", keyfile: str = "", check_hostname: bool = True
) -> ssl.SSLContext:
    """A client TLS context that verifies the server: against ``cafile`` (PEM) or, when
    it is empty, the system's trusted CAs (what a managed service's public certificate
    needs); with a client certificate when ``certfile`` is set (its key in ``keyfile`` or
    in the same file). TLS 1.2 at least."""
    context = ssl.create_default_context(cafile=cafile or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = check_hostname
    if certfile:
        context.load_cert_chain(certfile, keyfile or None)
    return context


def host_ports(addresses: str) -> list[tuple[str, int]]:
    """``"host:port,host:port"`` as pairs, in order; a malformed entry is a ConfigError."""
    pairs = []
    for entry in (e.strip() for e in addresses.split(",") if e.strip()):
        host, _, port = entry.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"{entry!r} is not host:port")
        pairs.append((host, int(port)))
    return pairs


class Settings(BaseSettings):
    """Defaults match the local stack started by ``make up``; override with env vars."""

    # extra="forbid": an unknown key given explicitly (Serve `args:`, keyword arguments) is an
    # error naming it; environment variables that are not settings are never read at all.
    # hide_input_in_errors: a validation error never echoes what was given (a password).
    model_config = SettingsConfigDict(
        case_sensitive=False, extra="forbid", hide_input_in_errors=True
    )

    # Kafka (Apache Kafka 4.x, KRaft)
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_topic: str = "weather-tweets"
    kafka_dead_letter_topic: str = "weather-tweets-dlq"
    # how long the dead-letter topic keeps a letter (set when the app creates the topic, or
    # alters an existing one): 7 days, so a weekend does not cost a letter
    kafka_dead_letter_retention_ms: int = Field(default=604_800_000, ge=3_600_000)
    kafka_partitions: int = Field(default=4, ge=1)
    kafka_consumer_group: str = "weather-redis-counter"
    # replication of the topics the app creates (1 for one broker; 3 and 2 on a managed
    # cluster: a write is then confirmed by at least 2 brokers, acks=all)
    kafka_replication_factor: int = Field(default=1, ge=1)
    kafka_min_insync_replicas: int = Field(default=1, ge=1)
    # TLS and SASL (managed Kafka: SASL_SSL with SCRAM or PLAIN)
    kafka_security_protocol: KafkaSecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: KafkaSaslMechanism = ""
    kafka_sasl_username: str = ""
    kafka_sasl_password: SecretStr = SecretStr("")
    kafka_ssl_cafile: str = ""  # "" = the system's trusted CAs
    kafka_ssl_certfile: str = ""  # a client certificate (mutual TLS), optional
    kafka_ssl_keyfile: str = ""
    kafka_ssl_check_hostname: bool = True

    # RabbitMQ
    rabbitmq_host: str = "127.0.0.1"
    rabbitmq_port: int = 5672
    rabbitmq_user: str = "weather"
    rabbitmq_password: SecretStr = SecretStr("weather-local")
    rabbitmq_vhost: str = "/"
    rabbitmq_tls: bool = False  # amqps
    # A cluster: "host:port,..." of its nodes, tried in this order on every (re)connect;
    # "" = rabbitmq_host:rabbitmq_port alone.
    rabbitmq_addresses: str = ""
    rabbitmq_ssl_cafile: str = ""
    rabbitmq_ssl_certfile: str = ""
    rabbitmq_ssl_keyfile: str = ""
    rabbitmq_exchange: str = "weather-tweets"
    rabbitmq_queue: str = "weather-tweets"
    rabbitmq_dead_letter_exchange: str = "weather-tweets-dlx"
    rabbitmq_dead_letter_queue: str = "weather-tweets-dlq"
    # RabbitMQ's management HTTP API: admission reads the tweet queue's bytes and limits there
    # (AMQP tells only a message count); the app's user needs the monitoring tag. A cluster:
    # "url,url,..." (one per node, tried in order); "" = http://<rabbitmq_host>:15672
    rabbitmq_management_url: str = ""
    # Bounds of the dead-letter queue (declared with x-overflow reject-publish: a full queue
    # refuses the publish, the letter stays in the store's outbox, visible): a quarter of
    # the local stack's 2 GiB RabbitMQ volume at most, so letters can never raise a disk
    # alarm that would block every publish.
    rabbitmq_dead_letter_max_bytes: int = Field(default=268_435_456, ge=1_048_576)
    rabbitmq_dead_letter_max_length: int = Field(default=200_000, ge=1)

    # Stores: Kafka drains into Redis, RabbitMQ into Valkey
    redis_host: str = "127.0.0.1"
    redis_port: int = 6379
    redis_username: str = ""  # an ACL user ("" = the default user)
    redis_password: SecretStr = SecretStr("")
    redis_tls: bool = False  # rediss
    redis_ssl_cafile: str = ""
    redis_ssl_certfile: str = ""
    redis_ssl_keyfile: str = ""
    valkey_host: str = "127.0.0.1"
    valkey_port: int = 6380
    valkey_username: str = ""
    valkey_password: SecretStr = SecretStr("")
    valkey_tls: bool = False
    valkey_ssl_cafile: str = ""
    valkey_ssl_certfile: str = ""
    valkey_ssl_keyfile: str = ""
    # Replicated stores: with *_sentinels set ("host:port,..."), the client asks those
    # Sentinels for the primary named *_sentinel_master (and again after a failover)
    # instead of connecting to *_host:*_port.
    redis_sentinels: str = ""
    redis_sentinel_master: str = "weather-redis"
    valkey_sentinels: str = ""
    valkey_sentinel_master: str = "weather-valkey"
    # Durable writes (docs/guarantees.md): a batch's store write returns only once
    # WAITAOF saw it fsynced to the AOF of store_wait_local primaries (0 or 1) and
    # store_wait_replicas replicas within store_wait_timeout_ms, so the consumer commits
    # or acks after that; short of the count the write failed and the batch is retried.
    store_wait_local: int = Field(default=1, ge=0, le=1)
    store_wait_replicas: int = Field(default=0, ge=0)
    store_wait_timeout_ms: int = Field(default=2000, ge=1)

    # How long connecting to a broker or store may take (TCP, TLS handshake, login): a
    # wrong password or an untrusted certificate is then an error, never a hang.
    connect_timeout_s: float = Field(default=10.0, gt=0)

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
    # Streams may hold at most this many of a Gateway replica's request slots (Serve's
    # max_ongoing_requests, 256), so open sockets never starve POST /input or /health; one
    # that sends nothing for stream_idle_timeout_s is closed; the frames every stream of a
    # replica holds while they are published stay under stream_max_bytes_in_flight.
    stream_max_open: int = Field(default=64, ge=1)
    stream_idle_timeout_s: float = Field(default=60.0, gt=0)
    stream_max_bytes_in_flight: int = Field(default=67_108_864, ge=1)  # 64 MiB
    # Adaptive concurrency limit (docs/guarantees.md "Overload"): the POST /input requests a
    # Gateway replica works on at once, moved between floor and ceiling by publish latency
    # (serve_app/ingest/limiter.py); one more is answered 503 + Retry-After, body unread.
    # The ceiling stays under Serve's max_ongoing_requests (256) less the streams' 64
    # slots, so this limit refuses, not Serve's check on the replica's loop.
    concurrency_limit_initial: int = Field(default=128, ge=1)
    concurrency_limit_floor: int = Field(default=64, ge=1)  # >= EDGE_SERVER_MAXCONN
    concurrency_limit_ceiling: int = Field(default=192, ge=1)
    concurrency_limit_tolerance: float = Field(default=2.0, ge=1.0)
    # HAProxy's limits for the Gateway (docs/guarantees.md "Overload"), read by the HAProxy
    # template of the Ray nodes (serve_app/ingest/edge.py) and so set in ray-env.yaml, not
    # in args: requests on one replica at once, and how long one more waits in HAProxy's
    # queue before HAProxy answers 503 + Retry-After. 0 and 0: Ray's template unchanged.
    edge_server_maxconn: int = Field(default=0, ge=0)
    edge_queue_timeout_ms: int = Field(default=0, ge=0)
    edge_app: str = "ingest"  # the Serve application they apply to

    # Admission control (docs/guarantees.md): refuse new tweets (503) before a record not yet
    # counted could be deleted. From the brokers' own readings: a partition's (queue's)
    # unconsumed bytes, messages or oldest record past admission_broker_limit_ratio of the
    # retention (queue limits) the broker applies; the unconsumed bytes of a whole topic
    # (queue) past its volume budget; a store's memory plus what its broker still holds for it
    # past admission_store_memory_ratio of its maxmemory.
    admission_kafka_max_bytes: int = Field(default=402_653_184, ge=1)  # 384 MiB volume budget
    admission_rabbitmq_max_bytes: int = Field(default=402_653_184, ge=1)  # below the alarms
    admission_broker_limit_ratio: float = Field(default=0.5, gt=0, le=1)
    admission_store_memory_ratio: float = Field(default=0.8, gt=0, le=1)
    admission_stale_after_s: float = Field(default=30.0, gt=0)
    admission_poll_interval_s: float = Field(default=1.0, ge=1.0)

    # Consumers and store
    kafka_consumers: int = Field(default=1, ge=0)
    rabbit_consumers: int = Field(default=1, ge=0)
    consumer_batch_size: int = Field(default=100, ge=1)  # messages (chunks) per batch
    # dead letters of the store's outbox published in one send (confirmed together)
    dead_letter_drain_batch: int = Field(default=500, ge=1, le=10_000)
    latest_tweets_length: int = Field(default=100, ge=1)
    seen_id_ttl_s: int = Field(default=172_800, ge=86_400)
    # The key of the content fingerprint that decides an id conflict (an HMAC: a client
    # cannot compute it, so it cannot choose content that wins an id). Every consumer of both
    # stores needs the same one; consumers refuse to start without it. A secret: make up
    # writes one into .devstack, Kubernetes takes it from the weather-credentials Secret.
    fingerprint_key: SecretStr = SecretStr("")

    @model_validator(mode="after")
    def _combinations_work(self) -> Self:
        """Refuse settings that cannot work together, each naming what to change."""
        protocol, mechanism = self.kafka_security_protocol, self.kafka_sasl_mechanism
        if protocol.startswith("SASL_") and not mechanism:
            raise ConfigError(f"kafka_security_protocol {protocol} needs kafka_sasl_mechanism")
        if protocol.startswith("SASL_") and not self.kafka_sasl_username:
            raise ConfigError(f"kafka_security_protocol {protocol} needs kafka_sasl_username")
        if mechanism and not protocol.startswith("SASL_"):
            raise ConfigError(
                f"kafka_sasl_mechanism {mechanism} needs kafka_security_protocol "
                f"SASL_SSL or SASL_PLAINTEXT (not {protocol})"
            )
        if self.kafka_min_insync_replicas > self.kafka_replication_factor:
            raise ConfigError(
                f"kafka_min_insync_replicas ({self.kafka_min_insync_replicas}) exceeds "
                f"kafka_replication_factor ({self.kafka_replication_factor}): no write "
                "could ever be confirmed"
            )
        for prefix in ("kafka", "rabbitmq", "redis", "valkey"):
            self._check_tls_files(prefix)
        host_ports(self.rabbitmq_addresses)
        for store in ("redis", "valkey"):
            if self.sentinels(store) and self.uses_tls(store):
                raise ConfigError(f"{store}_sentinels with {store}_tls is not supported")
        return self

    def _check_tls_files(self, prefix: str) -> None:
        """Each TLS file that is set exists, and is only set where TLS is on."""
        names = [f"{prefix}{suffix}" for suffix in TLS_FILE_SUFFIXES]
        given = [name for name in names if getattr(self, name)]
        if given and not self.uses_tls(prefix):
            switch = f"{prefix}_tls=true"
            if prefix == "kafka":
                switch = "kafka_security_protocol SSL or SASL_SSL"
            raise ConfigError(f"{', '.join(given)} set but TLS is off: set {switch}")
        for name in given:
            path = Path(getattr(self, name))
            if not path.is_file():
                raise ConfigError(f"{name}: no such file {str(path)!r}")
        if getattr(self, f"{prefix}_ssl_keyfile") and not getattr(self, f"{prefix}_ssl_certfile"):
            raise ConfigError(f"{prefix}_ssl_keyfile needs {prefix}_ssl_certfile")

    def uses_tls(self, prefix: str) -> bool:
        """Whether ``prefix`` (kafka, rabbitmq, redis, valkey) is reached over TLS."""
        if prefix == "kafka":
            return self.kafka_security_protocol in ("SSL", "SASL_SSL")
        return bool(getattr(self, f"{prefix}_tls"))

    def tls_context_for(self, prefix: str) -> ssl.SSLContext | None:
        """The client TLS context of ``prefix``'s server, or None when TLS is off."""
        if not self.uses_tls(prefix):
            return None
        cafile, certfile, keyfile = (getattr(self, prefix + s) for s in TLS_FILE_SUFFIXES)
        check_hostname = self.kafka_ssl_check_hostname if prefix == "kafka" else True
        return tls_context(cafile, certfile, keyfile, check_hostname)

    @property
    def rabbitmq_url(self) -> str:
        """AMQP URL (amqps with ``rabbitmq_tls``) with user, password and vhost escaped (any
        character may be in them). It holds the password: never log it."""
        password = self.rabbitmq_password.get_secret_value()
        user, password, vhost = (
            quote(v, safe="") for v in (self.rabbitmq_user, password, self.rabbitmq_vhost)
        )
        scheme = "amqps" if self.rabbitmq_tls else "amqp"
        return f"{scheme}://{user}:{password}@{self.rabbitmq_host}:{self.rabbitmq_port}/{vhost}"

    @property
    def rabbitmq_urls(self) -> list[str]:
        """The URL of every node of ``rabbitmq_addresses`` in order (just
        :attr:`rabbitmq_url` without it): a client tries them one after the other."""
        if not self.rabbitmq_addresses:
            return [self.rabbitmq_url]
        first = f"@{self.rabbitmq_host}:{self.rabbitmq_port}/"
        return [
            self.rabbitmq_url.replace(first, f"@{host}:{port}/")
            for host, port in host_ports(self.rabbitmq_addresses)
        ]

    def sentinels(self, store: str) -> list[tuple[str, int]]:
        """The Sentinels of ``store`` (redis, valkey); empty when it is reached directly."""
        return host_ports(getattr(self, f"{store}_sentinels"))

    def content_key(self) -> bytes:
        """``fingerprint_key`` as the consumers use it; a :class:`ConfigError` naming the
        setting when it is missing or too short to be a secret."""
        key = self.fingerprint_key.get_secret_value()
        if len(key) < MIN_FINGERPRINT_KEY_CHARS:
            raise ConfigError(
                f"fingerprint_key must be at least {MIN_FINGERPRINT_KEY_CHARS} characters (set "
                "FINGERPRINT_KEY to a random secret, the same for every consumer: "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        return key.encode()

    def fingerprint(self) -> str:
        """Every setting as JSON with each password replaced by its SHA-256: what a
        consumer's version is made of (a new password is a new version), with no secret."""
        data = self.model_dump(mode="json")
        for name, value in self:
            if isinstance(value, SecretStr):
                data[name] = hashlib.sha256(value.get_secret_value().encode()).hexdigest()
        return json.dumps(data, sort_keys=True)

    @property
    def rabbitmq_address(self) -> str:
        """Where RabbitMQ is, without credentials: for error messages and logs."""
        scheme = "amqps" if self.rabbitmq_tls else "amqp"
        return f"{scheme}://{self.rabbitmq_host}:{self.rabbitmq_port}"

    @property
    def weathers(self) -> tuple[str, ...]:
        return tuple(w.strip() for w in self.weather_values.split(",") if w.strip())

    @property
    def tweet_rules(self) -> TweetRules:
        return TweetRules(self.weathers)
