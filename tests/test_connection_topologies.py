"""TLS and Sentinel, each against a real redis-server started for the test."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from django.test import override_settings

from redis_broker import BrokerUnavailable, apublish, publish
from redis_broker.connection import aclose_async_redis
from redis_broker.testing import RedisServer, free_port, wait_for


def write_self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """Write a self-signed certificate for 127.0.0.1 and its key; return their paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "redis.crt", folder / "redis.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """Start a redis-server that speaks only TLS; yield its port and CA certificate.

    Skipped only when the server says it has no TLS; a start that failed for another
    reason (a port taken between choosing and binding it) is retried on new ports.
    """
    pytest.importorskip("cryptography")
    cert, key = write_self_signed_cert(tmp_path)
    for _attempt in range(3):
        port = free_port()
        server = RedisServer(
            extra_args=(
                "--tls-port",
                str(port),
                "--tls-cert-file",
                str(cert),
                "--tls-key-file",
                str(key),
                "--tls-ca-cert-file",
                str(cert),
                "--tls-auth-clients",
                "no",
            )  # fmt: skip
        )
        try:
            server.start()
        except RuntimeError:
            said = server.log_path.read_text(errors="replace")
            server.close()
            if "Bad directive" in said:  # tls-port is unknown to a build without TLS
                pytest.skip(f"this redis-server was built without TLS: {said[-200:]}")
            continue
        yield port, cert
        server.close()
        return
    pytest.fail("a TLS redis-server did not start in 3 attempts")


def test_rediss_url_with_tls_options_publishes(tls_server: tuple[int, Path]) -> None:
    """Tests that rediss:// plus OPTIONS (CA certificate) reaches a TLS-only Redis."""
    port, ca = tls_server
    settings = {"URL": f"rediss://127.0.0.1:{port}/0", "OPTIONS": {"ssl_ca_certs": str(ca)}}
    with override_settings(REDIS_BROKER=settings):
        publish("orders", {"id": 1})
    client = redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(ca))
    try:
        assert client.xlen("orders") == 1
    finally:
        client.close()


def test_plain_url_to_a_tls_port_says_to_use_rediss(tls_server: tuple[int, Path]) -> None:
    """Tests that redis:// to a TLS-only port names rediss:// in the error, not only the
    connection reset the TLS port answers plain text with."""
    port, _ca = tls_server
    with (
        override_settings(REDIS_BROKER={"URL": f"redis://127.0.0.1:{port}/0"}),
        pytest.raises(BrokerUnavailable, match="if that port serves TLS, the URL must start"),
    ):
        publish("orders", 1)


def test_untrusted_certificate_says_to_give_the_ca(tls_server: tuple[int, Path]) -> None:
    """Tests that a certificate Python does not trust points at OPTIONS['ssl_ca_certs']."""
    port, _ca = tls_server
    with (
        override_settings(REDIS_BROKER={"URL": f"rediss://127.0.0.1:{port}/0"}),
        pytest.raises(BrokerUnavailable, match=r"give its CA with REDIS_BROKER\['OPTIONS'\]"),
    ):
        publish("orders", 1)


@pytest.fixture
def sentinel(
    tmp_path: Path, redis_server_factory: Callable[[], RedisServer]
) -> Iterator[tuple[int, RedisServer]]:
    """Start a master and a real Sentinel monitoring it as "mymaster"."""
    master = redis_server_factory()
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor mymaster 127.0.0.1 {master.port} 1\n"
    )
    process = subprocess.Popen(
        [master.binary, str(conf), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    probe = redis.Redis(port=port, socket_connect_timeout=0.5)

    def knows_master() -> bool:
        try:
            return bool(probe.sentinel_get_master_addr_by_name("mymaster"))
        except redis.ConnectionError:
            return False

    try:
        wait_for(knows_master, message="sentinel knows mymaster")
        yield port, master
    finally:
        probe.close()
        process.terminate()
        process.wait(timeout=10)


def test_sentinel_settings_find_the_master(sentinel: tuple[int, RedisServer]) -> None:
    """Tests that SENTINELS + SENTINEL_SERVICE publish to the master Sentinel names."""
    port, master = sentinel
    settings = {
        "URL": "redis://localhost/0",
        "SENTINELS": [("127.0.0.1", port)],
        "SENTINEL_SERVICE": "mymaster",
    }
    with override_settings(REDIS_BROKER=settings):
        publish("orders", {"id": 1})
    client = redis.Redis.from_url(master.url)
    try:
        assert client.xlen("orders") == 1
    finally:
        client.close()


async def test_async_client_reaches_tls_and_sentinel_masters(
    tls_server: tuple[int, Path], sentinel: tuple[int, RedisServer]
) -> None:
    """Tests that apublish builds its per-loop client with the same TLS and Sentinel options."""
    port, ca = tls_server
    tls = {"URL": f"rediss://127.0.0.1:{port}/0", "OPTIONS": {"ssl_ca_certs": str(ca)}}
    sentinel_port, master = sentinel
    via_sentinel = {
        "URL": "redis://localhost/0",
        "SENTINELS": [("127.0.0.1", sentinel_port)],
        "SENTINEL_SERVICE": "mymaster",
    }
    for settings, check in (
        (tls, redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(ca))),
        (via_sentinel, redis.Redis.from_url(master.url)),
    ):
        with override_settings(REDIS_BROKER=settings):
            await apublish("orders", {"id": 2})
            await aclose_async_redis()
        try:
            assert check.xlen("orders") == 1
        finally:
            check.close()
