"""A TLS pre-flight for the Kafka clients: a certificate problem is a configuration error.

kafka-python treats a failed handshake like an unreachable broker: it logs and
retries forever, so a wrong CA file or host name looks like an outage and the
process never says what is wrong. One handshake at start, with the same
settings, turns certificate and host-name failures into one sentence (exit 2).
An unreachable broker is not an error here: the ingest loop reconnects with
backoff. Nothing secret is put in the message (no key password, no file contents).
"""

from __future__ import annotations

import socket
import ssl

from dispatchloop.settings import ConfigError, KafkaSettings

PREFLIGHT_TIMEOUT_S = 5.0


def tls_context(kafka: KafkaSettings) -> ssl.SSLContext:
    """The client context the settings describe (CA file, client certificate, host-name check)."""
    cafile = str(kafka.ssl_cafile) if kafka.ssl_cafile is not None else None
    context = ssl.create_default_context(cafile=cafile)
    context.check_hostname = kafka.ssl_check_hostname
    if kafka.ssl_certfile is not None:
        password = kafka.ssl_key_password.get_secret_value() if kafka.ssl_key_password else None
        keyfile = str(kafka.ssl_keyfile) if kafka.ssl_keyfile is not None else None
        try:
            context.load_cert_chain(str(kafka.ssl_certfile), keyfile, password)
        except ssl.SSLError as exc:
            raise ConfigError(
                f"Cannot load the Kafka client certificate {str(kafka.ssl_certfile)!r} "
                f"({exc.reason}): check DISPATCHLOOP_KAFKA__SSL_CERTFILE, _SSL_KEYFILE and "
                "_SSL_KEY_PASSWORD."
            ) from None
    return context


def check_tls(kafka: KafkaSettings, timeout_s: float = PREFLIGHT_TIMEOUT_S) -> bool:
    """Handshake with the first reachable bootstrap server; True if one succeeded.

    Raises ConfigError when a broker answers but TLS fails (certificate not trusted,
    host name not in the certificate, not a TLS listener). False when no broker could
    be reached at all (not a configuration error: the loop retries).
    """
    if not kafka.security_protocol.endswith("SSL"):
        return False
    context = tls_context(kafka)
    for server in kafka.bootstrap_servers:
        host, _, port = server.rpartition(":")
        host = host.strip("[]")
        try:
            with (
                socket.create_connection((host, int(port)), timeout=timeout_s) as raw,
                context.wrap_socket(raw, server_hostname=host),
            ):
                return True
        except ssl.SSLCertVerificationError as exc:
            raise ConfigError(
                f"TLS to the Kafka broker {server} failed certificate verification "
                f"({exc.verify_message}): check DISPATCHLOOP_KAFKA__SSL_CAFILE and that "
                "DISPATCHLOOP_KAFKA__BOOTSTRAP_SERVERS names the host the certificate is for."
            ) from None
        except ssl.SSLError as exc:
            raise ConfigError(
                f"TLS handshake with the Kafka broker {server} failed ({exc.reason}): is it a "
                "TLS listener (DISPATCHLOOP_KAFKA__SECURITY_PROTOCOL)?"
            ) from None
        except OSError:
            continue
    return False
