"""How every Kafka client restyle runs connects: the one place that turns the broker settings
(bootstrap, SASL, TLS) into aiokafka options and faust credentials, so the workers, the CLI,
the key ring and the bucket bridge never differ."""
from __future__ import annotations

import ssl

import faust
from aiokafka.helpers import create_ssl_context

from streams.core.settings.broker import BrokerSettings


def tls_context(settings: BrokerSettings) -> ssl.SSLContext | None:
    """The TLS context of SSL and SASL_SSL connections (None for plaintext ones): the
    configured CA (else the system's), a client certificate when given, host names checked
    unless RESTYLE_KAFKA_SSL_CHECK_HOSTNAME is false (the chain is always verified)."""
    if not settings.kafka_security_protocol.endswith("SSL"):
        return None
    password = settings.kafka_ssl_key_password
    context = create_ssl_context(
        cafile=settings.kafka_ssl_cafile, certfile=settings.kafka_ssl_certfile,
        keyfile=settings.kafka_ssl_keyfile,
        password=password.get_secret_value() if password else None)
    context.check_hostname = settings.kafka_ssl_check_hostname
    return context


def client_options(settings: BrokerSettings) -> dict:
    """Keyword arguments for any aiokafka producer, consumer or admin client."""
    options = {"bootstrap_servers": settings.kafka_bootstrap,
               "security_protocol": settings.kafka_security_protocol}
    context = tls_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if settings.kafka_security_protocol.startswith("SASL_"):
        options.update(sasl_mechanism=settings.kafka_sasl_mechanism,
                       sasl_plain_username=settings.kafka_sasl_username,
                       sasl_plain_password=settings.kafka_sasl_password.get_secret_value())
    return options


def faust_credentials(settings: BrokerSettings) -> dict:
    """faust.App keyword arguments for the same connection."""
    context = tls_context(settings)
    if settings.kafka_security_protocol.startswith("SASL_"):
        return {"broker_credentials": faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password.get_secret_value(),
            mechanism=settings.kafka_sasl_mechanism, ssl_context=context)}
    if context is not None:
        return {"broker_credentials": faust.SSLCredentials(context)}
    return {}
