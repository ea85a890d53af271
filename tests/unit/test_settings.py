"""Settings: sources, precedence, one-sentence errors, secrets masked, client options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dispatchloop.settings import ConfigError, KafkaSettings, load_settings, masked_dump


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("DISPATCHLOOP_") and not key.startswith("DISPATCHLOOP_TEST_"):
            monkeypatch.delenv(key)


def test_defaults_put_the_store_under_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DISPATCHLOOP_DATA_DIR", str(tmp_path))
    settings = load_settings()
    assert settings.resolved_store_url == f"sqlite:///{tmp_path / 'replay.db'}"
    assert settings.kafka.topic == "dispatch.outcomes"
    assert settings.kafka.dlq_topic == "dispatch.outcomes.dlq"
    assert settings.kafka.auto_offset_reset == "earliest"
    assert settings.metrics.host == "127.0.0.1"


def test_env_overrides_toml_key_by_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    config = tmp_path / "dispatchloop.toml"
    config.write_text('[kafka]\ntopic = "from-file"\ngroup_id = "file-group"\n')
    monkeypatch.setenv("DISPATCHLOOP_KAFKA__TOPIC", "from-env")
    settings = load_settings(config)
    assert settings.kafka.topic == "from-env"
    assert settings.kafka.group_id == "file-group"


def test_config_file_from_env_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    config = tmp_path / "c.toml"
    config.write_text("[metrics]\nport = 9999\n")
    monkeypatch.setenv("DISPATCHLOOP_CONFIG", str(config))
    assert load_settings().metrics.port == 9999


def test_bootstrap_list_is_comma_separated(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DISPATCHLOOP_KAFKA__BOOTSTRAP_SERVERS", "k1:9092, k2:9093,[::1]:9094")
    assert load_settings().kafka.bootstrap_servers == ["k1:9092", "k2:9093", "[::1]:9094"]


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("KAFKA__SECURITY_PROTOCOL", "SASL_FOO", "DISPATCHLOOP_KAFKA__SECURITY_PROTOCOL"),
        ("KAFKA__BOOTSTRAP_SERVERS", "broker-without-port", "is not a host:port pair"),
        ("KAFKA__BOOTSTRAP_SERVERS", "host:99999", "is not a host:port pair"),
        ("STORE_URL", "mysql://x", "DISPATCHLOOP_STORE_URL"),
        ("METRICS__PORT", "http", "DISPATCHLOOP_METRICS__PORT"),
        ("KAFKA__SECURITY_PROTOCOL", "SASL_SSL", "needs sasl_mechanism"),
        ("KAFKA_TOPIC", "typo", "Unknown setting DISPATCHLOOP_KAFKA_TOPIC"),
        ("INGEST__DLQ_TRUNCATED_PREFIX_BYTES", "600000", "below dlq_max_record_bytes / 2"),
        ("INGEST__DLQ_MAX_RECORD_BYTES", "2000000", "DISPATCHLOOP_INGEST__DLQ_MAX_RECORD_BYTES"),
        ("INGEST__READINESS_TIMEOUT_S", "0", "DISPATCHLOOP_INGEST__READINESS_TIMEOUT_S"),
    ],
)
def test_bad_settings_give_one_sentence(
    monkeypatch: pytest.MonkeyPatch, key: str, value: str, fragment: str
):
    monkeypatch.setenv(f"DISPATCHLOOP_{key}", value)
    with pytest.raises(ConfigError) as error:
        load_settings()
    message = str(error.value)
    assert fragment in message
    assert "\n" not in message
    assert message.endswith(".") or message.endswith(")")


def test_missing_or_broken_config_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="Cannot read config file"):
        load_settings(tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[kafka\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(broken)


def test_secrets_are_masked(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DISPATCHLOOP_STORE_URL", "postgresql+psycopg://app:hunter2@db:5432/replay")
    monkeypatch.setenv("DISPATCHLOOP_KAFKA__SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("DISPATCHLOOP_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("DISPATCHLOOP_KAFKA__SASL_USERNAME", "svc")
    monkeypatch.setenv("DISPATCHLOOP_KAFKA__SASL_PASSWORD", "s3cret-pw")
    dumped = json.dumps(masked_dump(load_settings()))
    assert "hunter2" not in dumped
    assert "s3cret-pw" not in dumped
    assert "postgresql+psycopg://app:***@db:5432/replay" in dumped


def test_client_options_plaintext():
    options = KafkaSettings(bootstrap_servers=["a:1"]).client_options()
    assert options["security_protocol"] == "PLAINTEXT"
    assert "sasl_mechanism" not in options
    assert "ssl_cafile" not in options


def test_client_options_sasl_ssl(tmp_path: Path):
    ca = tmp_path / "ca.pem"
    ca.write_text("dummy")
    options = KafkaSettings(
        bootstrap_servers=["a:1"],
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="svc",
        sasl_password="pw",  # type: ignore[arg-type]
        ssl_cafile=ca,
    ).client_options()
    assert options["sasl_mechanism"] == "SCRAM-SHA-256"
    assert options["sasl_plain_username"] == "svc"
    assert options["sasl_plain_password"] == "pw"
    assert options["ssl_cafile"] == str(ca)
    assert options["ssl_check_hostname"] is True


def test_missing_tls_file_is_a_config_error(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DISPATCHLOOP_KAFKA__SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("DISPATCHLOOP_KAFKA__SSL_CAFILE", "/nonexistent/ca.pem")
    with pytest.raises(ConfigError, match="ssl_cafile"):
        load_settings()
