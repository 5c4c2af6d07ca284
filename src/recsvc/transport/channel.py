"""How a caller should reach recsvc: the channel (plaintext or TLS, optionally mutual), the
bearer token's metadata, and the service config every client is advised to use.

The service config retries a call that ended UNAVAILABLE (a worker killed or restarting, a
connection reset) or RESOURCE_EXHAUSTED (refused by the server's load shedder before any work
was done: a backlog behind a stalled loop, or a replica that just took over its peer's share)
up to three more times, backing off 50 ms, 150 ms and 450 ms at most (jittered), so a
refusal is ridden out inside a 1 s deadline. gRPC's retry throttling stops the retries while
most calls fail (each failure spends a token, each success earns a tenth of one; no retries
below half of ten), so retries never multiply the load on a server that is really
overloaded. Every RPC is retried, GetNudges too: a retry cannot exceed a cap (the cap store
counts what an attempt recorded, so at worst the retried answer withholds a nudge that a
killed attempt counted and never delivered). `recsvc client`, the benchmarks and the chaos
harness use it; clients in other languages take the same JSON (README).

A caller of several replicas (a list of addresses, `ipv4:10.0.0.1:50051,10.0.0.2:50051`, or a
DNS name that resolves to each of them, as a Kubernetes headless Service does) adds
BALANCED: calls spread round robin, and each replica's grpc.health.v1 Watch takes it out of
the rotation the moment it reports NOT_SERVING, so a replica that drains (SIGTERM) is sent
no new call while it finishes those it has.
"""

from __future__ import annotations

import json
from pathlib import Path

import grpc

from recsvc.errors import ConfigError
from recsvc.transport.security import read_file

SERVICE = "recsvc.v1.RedemptionService"
SERVICE_CONFIG = {
    "methodConfig": [{
        "name": [{"service": SERVICE}],  # every method
        "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.05s", "maxBackoff": "0.45s",
                        "backoffMultiplier": 3,
                        "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"]},
    }],
    "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
}
BALANCED = {"loadBalancingConfig": [{"round_robin": {}}],
            "healthCheckConfig": {"serviceName": ""}}


def options(*, balanced: bool = False) -> list[tuple[str, str | int]]:
    """Channel options carrying SERVICE_CONFIG (retries on), with BALANCED for a target of
    several replicas."""
    config = SERVICE_CONFIG | BALANCED if balanced else SERVICE_CONFIG
    return [("grpc.service_config", json.dumps(config)), ("grpc.enable_retries", 1)]


def client_channel(address: str, *, ca: Path | None = None, cert: Path | None = None,
                   key: Path | None = None) -> grpc.aio.Channel:
    """An aio channel to `address`: TLS when a CA (or a client certificate, for mutual TLS)
    is given, plaintext otherwise."""
    if ca is None and cert is None:
        return grpc.aio.insecure_channel(address, options=options())
    if (cert is None) != (key is None):
        raise ConfigError("--tls-cert and --tls-key: give both, or neither")
    return grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(
        root_certificates=read_file(ca, "--tls-ca") if ca else None,
        private_key=read_file(key, "--tls-key") if key else None,
        certificate_chain=read_file(cert, "--tls-cert") if cert else None), options=options())


def bearer(token: str | None) -> list[tuple[str, str]]:
    """The call metadata that carries `token` (none without one)."""
    return [("authorization", f"Bearer {token}")] if token else []
