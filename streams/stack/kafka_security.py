"""A SASL_SSL listener for the embedded Apache Kafka: a private CA, a broker certificate for
127.0.0.1/localhost, a client certificate, SCRAM users created when storage is formatted, and
the broker properties that use them. For trying restyle's secured connections (and testing
them) on one machine; a production cluster brings its own PKI and users."""
from __future__ import annotations

import datetime
import ipaddress
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass
class SecureListener:
    """What a client needs: the CA, a client certificate and key, and users by name."""

    directory: Path
    users: dict[str, str] = field(default_factory=dict)  # name -> password (SCRAM and PLAIN)
    admin_password: str = field(default_factory=lambda: secrets.token_urlsafe(16))

    @property
    def cafile(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def client_certfile(self) -> Path:
        return self.directory / "client.pem"

    @property
    def client_keyfile(self) -> Path:
        return self.directory / "client-key.pem"

    def issue(self) -> None:
        """Write the CA, the broker's key and chain (one PEM, Kafka's PEM key store) and a
        client certificate, all signed by the CA."""
        self.directory.mkdir(parents=True, exist_ok=True)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "restyle embedded CA")])
        ca = _certificate(ca_name, ca_name, ca_key.public_key(), ca_key, ca=True)
        self.cafile.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        for name, key_path, chain_path, alt_names in [
                ("127.0.0.1", self.directory / "broker.pem", self.directory / "broker.pem",
                 [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                ("restyle-client", self.client_keyfile, self.client_certfile, [])]:
            key = ec.generate_private_key(ec.SECP256R1())
            subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
            cert = _certificate(subject, ca_name, key.public_key(), ca_key, alt_names=alt_names)
            pem_key = key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
            chain = cert.public_bytes(serialization.Encoding.PEM) + \
                ca.public_bytes(serialization.Encoding.PEM)
            if key_path == chain_path:
                key_path.write_bytes(pem_key + chain)
            else:
                key_path.write_bytes(pem_key)
                chain_path.write_bytes(chain)
            key_path.chmod(0o600)

    def properties(self, port: int, controller_port: int) -> str:
        """The listener part of server.properties (replacing the plaintext one)."""
        plain_users = "".join(f' user_{name}="{password}"' for name, password in
                              {"admin": self.admin_password, **self.users}.items())
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule required"
        return "\n".join([
            f"listeners=SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=SASL_SSL://127.0.0.1:{port}",
            "listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name=SASL_SSL",
            "sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
            "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
            f'listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={scram} username="admin" '
            f'password="{self.admin_password}";',
            f"listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config={scram};",
            "listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security."
            f'plain.PlainLoginModule required username="admin" password="{self.admin_password}"'
            f"{plain_users};",
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={self.directory / 'broker.pem'}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={self.cafile}",
            # Clients prove themselves twice: a certificate from the CA, then a SASL user (on a
            # SASL_SSL listener Kafka honours ssl.client.auth only with the listener prefix).
            "listener.name.sasl_ssl.ssl.client.auth=required",
        ]) + "\n"

    def scram_arguments(self) -> list[str]:
        """`kafka-storage format` arguments creating the SCRAM users with the cluster."""
        arguments = ["--add-scram", f"SCRAM-SHA-512=[name=admin,password={self.admin_password}]"]
        for name, password in self.users.items():
            for mechanism in SCRAM_MECHANISMS:
                arguments += ["--add-scram", f"{mechanism}=[name={name},password={password}]"]
        return arguments


def _certificate(subject, issuer, public_key, signing_key, ca: bool = False,
                 alt_names=()) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(alt_names)),
                                        critical=False)
    return builder.sign(signing_key, hashes.SHA256())
