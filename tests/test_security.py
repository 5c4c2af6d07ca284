"""TLS, mutual TLS and bearer tokens, end to end over real grpc.aio servers, with certificates
made at test time."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import ipaddress
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry

from recsvc.app.dataplane import Dataplane
from recsvc.errors import ConfigError, FeatureStoreUnavailable
from recsvc.metrics import ServiceMetrics
from recsvc.settings import Settings
from recsvc.transport import channel as callers
from recsvc.transport import client as serving_client
from recsvc.transport import security
from recsvc.transport.server import create_server, mark_serving
from recsvc.transport.servicer import RedemptionServicer
from recsvc.v1 import recsvc_pb2 as pb
from recsvc.v1 import recsvc_pb2_grpc

TOKEN = "s3cret-token-for-tests-0001"


class Down:
    def read_service(self, service: str, entity_key: str, ids: Sequence[int]) -> dict:
        raise FeatureStoreUnavailable("no store in this test")


class NoModel:
    current = None


def _pem(key: Any) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(name: str, key: Any, issuer: tuple[x509.Name, Any] | None, *, ca: bool = False,
          server: bool = False) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer or (subject, key)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_pki(tmp_path_factory.mktemp("pki"))


def make_pki(out: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and localhost and a client certificate, as PEM
    files in `out` ("ca.crt", "server.key", ...)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("recsvc test CA", ca_key, None, ca=True)
    files: dict[str, Path] = {}
    for name, key, cert in [("ca", ca_key, ca)] + [
            (n, k, _cert(n, k, (ca.subject, ca_key), server=n == "server"))
            for n, k in (("server", ec.generate_private_key(ec.SECP256R1())),
                         ("client", ec.generate_private_key(ec.SECP256R1())))]:
        files[f"{name}.crt"] = out / f"{name}.crt"
        files[f"{name}.crt"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{name}.key"] = out / f"{name}.key"
        files[f"{name}.key"].write_bytes(_pem(key))
    return files


def _serve(settings: Settings, check: Callable[[str], Awaitable[None]]) -> None:
    async def run() -> None:
        metrics = ServiceMetrics(CollectorRegistry())
        plane = Dataplane(Down(), NoModel(), metrics)  # type: ignore[arg-type]
        server, port, health = await create_server(
            "127.0.0.1:0", RedemptionServicer(plane, metrics),
            credentials=security.server_credentials(settings),
            interceptors=security.interceptors(settings))
        await mark_serving(health)
        try:
            await check(f"127.0.0.1:{port}")
        finally:
            await server.stop(grace=None)

    asyncio.run(run())


async def _churn(channel: grpc.aio.Channel, token: str | None = None) -> Any:
    stub = recsvc_pb2_grpc.RedemptionServiceStub(channel)
    return await stub.GetChurnRisk(pb.GetChurnRiskRequest(member_id=7), timeout=5,
                                   metadata=callers.bearer(token))


async def _code(call: Awaitable[Any]) -> str:
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return f"{err.code().name}: {err.details()}"
    return "OK"


def test_tokens_let_in_only_callers_that_carry_a_known_one(tmp_path: Path) -> None:
    file = tmp_path / "tokens"
    file.write_text(f"# one per line\n\n{TOKEN}\n")
    settings = Settings(auth_tokens_file=file, auth_tokens="another-token-of-16+chars")

    async def check(address: str) -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            assert (await _churn(channel, TOKEN)).risk.member_id == 7
            assert (await _churn(channel, "another-token-of-16+chars")).degraded
            denied = f"UNAUTHENTICATED: {security.DENIED}"
            # no token and a wrong one read the same: nothing about which tokens exist
            assert await _code(_churn(channel)) == denied
            assert await _code(_churn(channel, TOKEN + "x")) == denied
            assert await _code(_churn(channel, TOKEN[:-1])) == denied
            # probes stay open; reflection (a stream) does not
            probe = health_pb2_grpc.HealthStub(channel)
            status = await probe.Check(health_pb2.HealthCheckRequest())
            assert status.status == health_pb2.HealthCheckResponse.SERVING
            stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in stream:
                    pass
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

    _serve(settings, check)

    async def closed(address: str) -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            probe = health_pb2_grpc.HealthStub(channel)
            assert (await _code(probe.Check(health_pb2.HealthCheckRequest()))).startswith(
                "UNAUTHENTICATED")

    _serve(Settings(auth_tokens=TOKEN, auth_health_open=False), closed)


def test_tls_and_mutual_tls(pki: dict[str, Path]) -> None:
    tls = Settings(tls_cert_file=pki["server.crt"], tls_key_file=pki["server.key"])

    async def check(address: str) -> None:
        async with callers.client_channel(address, ca=pki["ca.crt"]) as channel:
            assert (await _churn(channel)).risk.member_id == 7
        async with grpc.aio.insecure_channel(address) as plain:  # no plaintext on a TLS port
            assert (await _code(_churn(plain))).startswith("UNAVAILABLE")

    _serve(tls, check)
    mutual = Settings(tls_cert_file=pki["server.crt"], tls_key_file=pki["server.key"],
                      tls_client_ca_file=pki["ca.crt"], auth_tokens=TOKEN)

    async def check_mutual(address: str) -> None:
        async with callers.client_channel(address, ca=pki["ca.crt"]) as anonymous:
            assert (await _code(_churn(anonymous, TOKEN))).startswith("UNAVAILABLE")
        async with callers.client_channel(address, ca=pki["ca.crt"], cert=pki["client.crt"],
                                           key=pki["client.key"]) as channel:
            assert (await _churn(channel, TOKEN)).risk.member_id == 7
            assert (await _code(_churn(channel))).startswith("UNAUTHENTICATED")
        # `recsvc client` with the matching flags
        args = argparse.Namespace(address=address, timeout=5.0, tls_ca=pki["ca.crt"],
                                  tls_cert=pki["client.crt"], tls_key=pki["client.key"],
                                  token=TOKEN, call="churn", member_ids=[7])
        assert await serving_client.call(args) == 0

    _serve(mutual, check_mutual)


def test_half_configured_security_is_refused(pki: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="set both"):
        security.server_credentials(Settings(tls_cert_file=pki["server.crt"]))
    with pytest.raises(ConfigError, match="mutual TLS"):
        security.server_credentials(Settings(tls_client_ca_file=pki["ca.crt"]))
    with pytest.raises(ConfigError, match="cannot read"):
        security.server_credentials(Settings(tls_cert_file=tmp_path / "no.crt",
                                             tls_key_file=tmp_path / "no.key"))
    with pytest.raises(ConfigError, match="16 characters"):
        security.tokens(Settings(auth_tokens="short"))
    assert security.interceptors(Settings()) == []
