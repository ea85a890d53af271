"""TLS in front of tansu for tests: a throwaway CA (openssl), stunnel4 terminating TLS on a
free loopback port, and a tansu broker advertising that port, so every client connection
goes through TLS (tansu 0.6 cannot serve TLS itself; see TESTING.md)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dispatchloop.testing.broker import READY_MARKER, broker_binary, free_port


@dataclass(frozen=True)
class TlsBroker:
    bootstrap: str
    """host:port of the TLS endpoint."""
    ca_file: Path
    """The CA that signed the server certificate."""
    other_ca_file: Path
    """A CA that signed nothing here (a wrong CA)."""


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_certificates(directory: Path) -> tuple[Path, Path, Path, Path]:
    """CA, server key/cert for localhost only, and an unrelated CA."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    other_key, other_crt = directory / "other.key", directory / "other.crt"
    for key, crt, name in ((ca_key, ca_crt, "test-ca"), (other_key, other_crt, "other-ca")):
        _openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            f"/CN={name}",
            "-keyout",
            str(key),
            "-out",
            str(crt),
        )
    key, csr, crt = directory / "server.key", directory / "server.csr", directory / "server.crt"
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        str(key),
        "-out",
        str(csr),
    )
    ext = directory / "san.ext"
    ext.write_text("subjectAltName=DNS:localhost\n")  # not 127.0.0.1: the wrong-host case
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca_crt),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        str(ext),
        "-out",
        str(crt),
    )
    return ca_crt, other_crt, key, crt


def _wait_for(path: Path, marker: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while marker not in path.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{process.args[0]} did not start: {path.read_text()[-500:]}")
        time.sleep(0.05)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextmanager
def tls_broker(directory: Path, host: str = "localhost") -> Iterator[TlsBroker]:
    """stunnel on TLS port → tansu on a plain port that advertises the TLS port as `host`."""
    stunnel = shutil.which("stunnel4") or shutil.which("stunnel")
    assert stunnel, "stunnel4 is required (Debian package `stunnel4`)"
    ca, other, key, crt = make_certificates(directory / "pki")
    tls_port, plain_port = free_port(), free_port()
    config = directory / "stunnel.conf"
    config.write_text(
        f"foreground = yes\npid =\ndebug = 5\n[kafka]\naccept = 127.0.0.1:{tls_port}\n"
        f"connect = 127.0.0.1:{plain_port}\ncert = {crt}\nkey = {key}\n"
    )
    stunnel_log, tansu_log = directory / "stunnel.log", directory / "tansu.log"
    with stunnel_log.open("wb") as log:
        tunnel = subprocess.Popen([stunnel, str(config)], stdout=log, stderr=subprocess.STDOUT)
    broker = None
    try:
        _wait_for(stunnel_log, "Configuration successful", tunnel, 30)
        with tansu_log.open("wb") as log:
            broker = subprocess.Popen(
                [
                    broker_binary(),
                    "broker",
                    "--listener-url",
                    f"tcp://127.0.0.1:{plain_port}",
                    "--advertised-listener-url",
                    f"tcp://{host}:{tls_port}",
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "RUST_LOG": "warn"},
            )
        _wait_for(tansu_log, READY_MARKER, broker, 30)
        yield TlsBroker(f"{host}:{tls_port}", ca, other)
    finally:
        if broker is not None:
            _stop(broker)
        _stop(tunnel)
