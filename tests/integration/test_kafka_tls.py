"""Secured Kafka for real: stunnel4 terminates TLS in front of tansu (TESTING.md).

SSL with the right CA file ingests; a wrong CA or a host name the certificate is not
for fails closed at start with one sentence (exit 2); no secret reaches the logs or
`config show`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from ingest_support import log_lines, metrics_port, stop, wait_until
from kafka import KafkaProducer
from tls_support import TlsBroker, tls_broker

from dispatchloop.replay import open_store
from dispatchloop.testing.events import encode, event_stream

pytestmark = pytest.mark.integration

SECRET = "tls-key-pass-7f3c9"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    with tls_broker(tmp_path_factory.mktemp("tls")) as broker:
        yield broker


def _env(bootstrap: str, ca: Path, store_url: str, topic: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHLOOP_")}
    env.update(
        {
            "DISPATCHLOOP_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "DISPATCHLOOP_KAFKA__SECURITY_PROTOCOL": "SSL",
            "DISPATCHLOOP_KAFKA__SSL_CAFILE": str(ca),
            "DISPATCHLOOP_KAFKA__SSL_KEY_PASSWORD": SECRET,
            "DISPATCHLOOP_KAFKA__TOPIC": topic,
            "DISPATCHLOOP_KAFKA__DLQ_TOPIC": f"{topic}.dlq",
            "DISPATCHLOOP_KAFKA__GROUP_ID": f"g-{topic}",
            "DISPATCHLOOP_KAFKA__SESSION_TIMEOUT_MS": "6000",
            "DISPATCHLOOP_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
            "DISPATCHLOOP_STORE_URL": store_url,
            "DISPATCHLOOP_METRICS__PORT": "0",
            "DISPATCHLOOP_LOG_FORMAT": "json",
            "DISPATCHLOOP_LOG_LEVEL": "DEBUG",
        }
    )
    return env


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatchloop.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def test_ssl_with_the_ca_ingests_and_keeps_the_secret(
    tls: TlsBroker, topic_name: str, sqlite_url: str, tmp_path: Path
):
    options = {"bootstrap_servers": tls.bootstrap, "security_protocol": "SSL"}
    options["ssl_cafile"] = str(tls.ca_file)
    create_topic_tls(options, topic_name)
    producer = KafkaProducer(acks="all", **options)
    events = list(event_stream(5, 200))
    for event in events:
        producer.send(topic_name, encode(event))
    producer.flush(timeout=30)
    producer.close(timeout=10)
    env = _env(tls.bootstrap, tls.ca_file, sqlite_url, topic_name)
    log = tmp_path / "run.log"
    with log.open("ab") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "dispatchloop.cli", "run"], env=env, stderr=handle
        )
    try:
        metrics_port(log, timeout_s=60)

        def stored() -> int:
            store = open_store(sqlite_url)
            try:
                return store.count_events()
            finally:
                store.close()

        wait_until(lambda: stored() == len(events), 90, "events ingested over TLS")
        assert stop(process, timeout_s=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    assert SECRET not in log.read_text()
    assert any(line["msg"] == "partitions assigned" for line in log_lines(log))
    shown = _run(env, "config", "show")
    assert shown.returncode == 0 and SECRET not in shown.stdout + shown.stderr
    assert "ssl_key_password" in shown.stdout


def create_topic_tls(options: dict[str, str], name: str) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(**options)
    try:
        admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])
    finally:
        admin.close()


@pytest.mark.parametrize("case", ["wrong_ca", "wrong_host"])
def test_a_wrong_ca_or_host_fails_closed_in_one_sentence(
    tls: TlsBroker, case: str, sqlite_url: str
):
    bootstrap, ca = tls.bootstrap, tls.ca_file
    if case == "wrong_ca":
        ca = tls.other_ca_file
    else:  # the certificate is for localhost only
        bootstrap = bootstrap.replace("localhost", "127.0.0.1")
    result = _run(_env(bootstrap, ca, sqlite_url, "t"), "run")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("\n") == 1, result.stderr
    assert "failed certificate verification" in result.stderr
    expected = (
        "unable to get local issuer"
        if case == "wrong_ca"
        else "mismatch, certificate is not valid for '127.0.0.1'"
    )
    assert expected in result.stderr and SECRET not in result.stderr
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists(), "nothing was started"


def test_the_preflight_passes_good_tls_and_leaves_outages_to_the_loop(tls: TlsBroker):
    from dispatchloop.consumers.tls import check_tls
    from dispatchloop.settings import KafkaSettings
    from dispatchloop.testing.broker import free_port

    good = KafkaSettings(
        bootstrap_servers=[tls.bootstrap], security_protocol="SSL", ssl_cafile=tls.ca_file
    )
    assert check_tls(good) is True
    down = good.model_copy(update={"bootstrap_servers": [f"localhost:{free_port()}"]})
    assert check_tls(down) is False, "an unreachable broker is an outage, not bad config"
    assert check_tls(KafkaSettings(bootstrap_servers=[tls.bootstrap])) is False  # PLAINTEXT
