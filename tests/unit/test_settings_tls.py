"""Settings for managed brokers and stores: TLS, SASL, ACL users, replication. No server:
what the settings accept and refuse, that no password ever shows, the one TLS context
builder, and what each client module is given."""

from __future__ import annotations

import logging
import pickle
import ssl
from pathlib import Path

import pytest
import trustme
from pydantic import SecretStr, ValidationError

from serve_app.brokers.kafka import kafka_connection, topic_refusals
from serve_app.errors import ConnectFailed, PipelineError, describe
from serve_app.settings import Settings, tls_context
from serve_app.store.client import TLSConnection, connect_store

PASSWORDS = {
    "kafka_sasl_password": "kafka-Secret-1",
    "rabbitmq_password": "rabbit-Secret-2",
    "redis_password": "redis-Secret-3",
    "valkey_password": "valkey-Secret-4",
}


@pytest.fixture(scope="module")
def ca_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ca")
    ca = trustme.CA()
    client = ca.issue_cert("weather-client")
    paths = {"ca": folder / "ca.pem", "cert": folder / "client.pem", "key": folder / "client.key"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    client.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    client.private_key_pem.write_to_path(str(paths["key"]))
    return paths


def managed(ca: Path, **overrides: object) -> Settings:
    """Every service behind TLS with a login, as on managed services."""
    values: dict[str, object] = {
        "kafka_security_protocol": "SASL_SSL",
        "kafka_sasl_mechanism": "SCRAM-SHA-512",
        "kafka_sasl_username": "weather",
        "kafka_ssl_cafile": str(ca),
        "rabbitmq_tls": True,
        "rabbitmq_ssl_cafile": str(ca),
        "redis_tls": True,
        "redis_username": "weather",
        "redis_ssl_cafile": str(ca),
        "valkey_tls": True,
        "valkey_username": "weather",
        "valkey_ssl_cafile": str(ca),
        **PASSWORDS,
    }
    return Settings(**(values | overrides))


def refusal(**values: object) -> str:
    with pytest.raises(ValidationError) as caught:
        Settings(**values)
    return str(caught.value)


# ------------------------------------------------------------------- defaults stay as they were


def test_defaults_are_the_local_stack_in_plain_text():
    settings = Settings()
    assert settings.kafka_security_protocol == "PLAINTEXT"
    assert (settings.kafka_replication_factor, settings.kafka_min_insync_replicas) == (1, 1)
    assert kafka_connection(settings) == {"bootstrap_servers": settings.kafka_bootstrap_servers}
    assert all(settings.tls_context_for(s) is None for s in ("kafka", "rabbitmq", "redis"))
    assert settings.rabbitmq_url.startswith("amqp://weather:weather-local@")
    for store in ("redis", "valkey"):
        client = connect_store(settings, store)
        assert client.connection_pool.connection_class is not TLSConnection
        assert client.connection_pool.connection_kwargs["username"] is None


def test_environment_variables_keep_working(monkeypatch: pytest.MonkeyPatch, ca_files):
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "weather")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "from-the-env")
    monkeypatch.setenv("KAFKA_SSL_CAFILE", str(ca_files["ca"]))
    monkeypatch.setenv("REDIS_PASSWORD", "redis-from-env")
    monkeypatch.setenv("SOMETHING_ELSE_ENTIRELY", "is not a setting and is not read")
    settings = Settings()
    assert settings.kafka_sasl_password.get_secret_value() == "from-the-env"
    assert settings.redis_password.get_secret_value() == "redis-from-env"
    assert kafka_connection(settings)["sasl_plain_password"] == "from-the-env"


# ------------------------------------------------------------------- explicit keys


def test_an_unknown_key_given_explicitly_is_refused_by_name():
    """Serve turns an application's `args:` into Settings with model_validate: a misspelt
    setting must fail the deploy, naming it, instead of silently keeping the default."""
    with pytest.raises(ValidationError) as caught:
        Settings.model_validate({"kafka_partitions": 2, "kafka_replicaton_factor": 3})
    text = str(caught.value)
    assert "kafka_replicaton_factor" in text and "Extra inputs are not permitted" in text
    assert Settings.model_validate({"kafka_replication_factor": 3}).kafka_replication_factor == 3


# ------------------------------------------------------------------- combinations


def test_a_sasl_protocol_needs_a_mechanism_and_a_user():
    assert "needs kafka_sasl_mechanism" in refusal(kafka_security_protocol="SASL_SSL")
    assert "needs kafka_sasl_username" in refusal(
        kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="PLAIN"
    )


def test_a_mechanism_without_a_sasl_protocol_is_refused():
    assert "kafka_sasl_mechanism SCRAM-SHA-256 needs" in refusal(
        kafka_security_protocol="SSL", kafka_sasl_mechanism="SCRAM-SHA-256"
    )


def test_unknown_protocols_and_mechanisms_are_refused():
    assert "kafka_security_protocol" in refusal(kafka_security_protocol="TLS")
    assert "kafka_sasl_mechanism" in refusal(
        kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="GSSAPI"
    )


def test_min_insync_replicas_cannot_exceed_the_replication_factor():
    assert "exceeds kafka_replication_factor" in refusal(
        kafka_replication_factor=2, kafka_min_insync_replicas=3
    )
    assert "kafka_replication_factor" in refusal(kafka_replication_factor=0)
    settings = Settings(kafka_replication_factor=3, kafka_min_insync_replicas=2)
    assert (settings.kafka_replication_factor, settings.kafka_min_insync_replicas) == (3, 2)


@pytest.mark.parametrize("prefix", ["kafka", "rabbitmq", "redis", "valkey"])
def test_a_tls_file_that_does_not_exist_fails_at_start_up(prefix: str, ca_files, tmp_path):
    missing = tmp_path / "nowhere" / "ca.pem"
    text = str(pytest.raises(ValidationError, managed, ca_files["ca"], **{
        f"{prefix}_ssl_cafile": str(missing)
    }).value)  # fmt: skip
    assert f"{prefix}_ssl_cafile: no such file" in text and str(missing) in text


@pytest.mark.parametrize("prefix", ["kafka", "rabbitmq", "redis", "valkey"])
def test_a_tls_file_while_tls_is_off_is_refused(prefix: str, ca_files):
    text = refusal(**{f"{prefix}_ssl_cafile": str(ca_files["ca"])})
    assert f"{prefix}_ssl_cafile set but TLS is off" in text


def test_a_client_key_needs_its_certificate(ca_files):
    text = str(
        pytest.raises(
            ValidationError, managed, ca_files["ca"], redis_ssl_keyfile=str(ca_files["key"])
        ).value
    )
    assert "redis_ssl_keyfile needs redis_ssl_certfile" in text


# ------------------------------------------------------------------- secrets never shown


def test_passwords_never_show_in_repr_str_dump_or_log(ca_files, caplog):
    settings = managed(ca_files["ca"])
    with caplog.at_level(logging.INFO):
        logging.getLogger("weather.test").info("settings: %s / %r", settings, settings)
    shown = [
        repr(settings),
        str(settings),
        settings.model_dump_json(),
        str(settings.model_dump()),
        settings.fingerprint(),
        settings.rabbitmq_address,
        caplog.text,
    ]
    for secret in PASSWORDS.values():
        for text in shown:
            assert secret not in text
    assert all(isinstance(getattr(settings, name), SecretStr) for name in PASSWORDS)


def test_a_refused_setting_never_echoes_a_password():
    secret = "echo-Me-Not-9"
    text = refusal(kafka_security_protocol="SASL_SSL", kafka_sasl_password=secret)
    assert "needs kafka_sasl_mechanism" in text and secret not in text
    text = refusal(rabbitmq_password=secret, rabbitmq_pasword=secret)
    assert "rabbitmq_pasword" in text and secret not in text


def test_a_new_password_is_a_new_consumer_version(ca_files):
    """Consumers are replaced when their settings change; a rotated password is a change."""
    one = managed(ca_files["ca"])
    other = managed(ca_files["ca"], redis_password="rotated")
    assert one.fingerprint() != other.fingerprint()
    assert one.fingerprint() == managed(ca_files["ca"]).fingerprint()


def test_connect_failed_names_the_server_and_survives_pickling():
    error = ConnectFailed("kafka", "SASL_SSL://b-1.example:9096", "SaslAuthenticationFailed")
    assert isinstance(error, PipelineError)
    assert (
        str(error)
        == "kafka at SASL_SSL://b-1.example:9096: cannot connect: SaslAuthenticationFailed"
    )
    assert str(pickle.loads(pickle.dumps(error))) == str(error)
    assert describe(error) == str(error)  # what a 503, /health or a log line shows


# ------------------------------------------------------------------- the TLS context builder


def test_tls_context_verifies_the_server_against_the_given_ca(ca_files):
    context = tls_context(str(ca_files["ca"]))
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert [c["subject"] for c in context.get_ca_certs()] != []


def test_tls_context_without_a_ca_uses_the_systems_trusted_cas():
    context = tls_context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_tls_context_loads_a_client_certificate_and_may_skip_the_hostname(ca_files):
    context = tls_context(str(ca_files["ca"]), str(ca_files["cert"]), str(ca_files["key"]), False)
    assert not context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED


def test_tls_context_refuses_a_file_that_is_no_certificate(tmp_path):
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    with pytest.raises(ssl.SSLError):
        tls_context(str(bogus))


# ------------------------------------------------------------------- what the clients get


def test_kafka_clients_get_protocol_sasl_and_the_tls_context(ca_files):
    settings = managed(ca_files["ca"], kafka_ssl_check_hostname=False)
    options = kafka_connection(settings)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "weather"
    assert options["sasl_plain_password"] == PASSWORDS["kafka_sasl_password"]
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert not options["ssl_context"].check_hostname


def test_kafka_ssl_without_sasl_and_sasl_without_ssl(ca_files):
    tls_only = kafka_connection(Settings(kafka_security_protocol="SSL"))
    assert tls_only["security_protocol"] == "SSL" and "sasl_mechanism" not in tls_only
    assert isinstance(tls_only["ssl_context"], ssl.SSLContext)
    sasl_only = kafka_connection(
        Settings(
            kafka_security_protocol="SASL_PLAINTEXT",
            kafka_sasl_mechanism="PLAIN",
            kafka_sasl_username="weather",
        )
    )
    assert sasl_only["ssl_context"] is None and sasl_only["sasl_mechanism"] == "PLAIN"


def test_rabbitmq_amqps_url_escapes_the_login_and_has_a_context(ca_files):
    settings = managed(ca_files["ca"], rabbitmq_password="p@ss:w/rd", rabbitmq_vhost="weather")
    assert settings.rabbitmq_url.startswith("amqps://weather:p%40ss%3Aw%2Frd@127.0.0.1:5672/")
    assert settings.rabbitmq_address == "amqps://127.0.0.1:5672"
    assert isinstance(settings.tls_context_for("rabbitmq"), ssl.SSLContext)


@pytest.mark.parametrize("store", ["redis", "valkey"])
def test_store_clients_log_in_as_the_acl_user_over_tls(store: str, ca_files):
    settings = managed(ca_files["ca"])
    pool = connect_store(settings, store).connection_pool
    assert pool.connection_class is TLSConnection
    kwargs = pool.connection_kwargs
    assert kwargs["username"] == "weather"
    assert kwargs["password"] == PASSWORDS[f"{store}_password"]
    assert isinstance(kwargs["tls_context"], ssl.SSLContext)
    assert kwargs["socket_connect_timeout"] == settings.connect_timeout_s
    connection = pool.make_connection()
    assert connection._connection_arguments()["ssl"] is kwargs["tls_context"]


def test_a_topic_the_broker_refused_to_create_is_named_with_its_reason():
    class Response:
        topic_errors = [
            ("weather-tweets", 38, "The target replication factor of 3 cannot be reached"),
            ("weather-tweets-dlq", 36, "Topic 'weather-tweets-dlq' already exists."),
            ("other", 0, None),
        ]

    assert topic_refusals(Response()) == [
        "weather-tweets: InvalidReplicationFactorError: "
        "The target replication factor of 3 cannot be reached"
    ]
    assert topic_refusals(object()) == []
