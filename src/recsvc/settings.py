"""Deployment settings: one typed object read once from the environment (RECSVC_*) at start."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from recsvc.defaults import GRPC_ADDRESS
from recsvc.errors import ConfigError


class Settings(BaseSettings):
    """Where recsvc keeps its data and which stores it talks to."""

    model_config = SettingsConfigDict(
        env_prefix="RECSVC_", frozen=True, extra="ignore", use_attribute_docstrings=True
    )

    data_dir: Path = Path("data")
    """Root of the canonical tables, the oracle files, offline features and the Feast registry."""

    feature_repo: Path = Path("feature_repo")
    """The Feast repository: feature_store.yaml and the feature definitions."""

    redis_url: str | None = None
    """When set (redis://[:password@]host:port/db), the online store is Redis instead of SQLite."""

    feast_project: str = "recsvc"
    """Feast project name; it namespaces every online-store key, so tests use their own."""

    simulate_when_empty: bool = True
    """`recsvc features` (and retrain) simulate a default population when there are no tables;
    False (in production) makes them fail instead."""

    programme: Path | None = None
    """Programme rules file (TOML); the packaged defaults when unset."""

    model_registry: Path | None = None
    """Model registry root; default <data_dir>/models."""

    metrics_dir: Path | None = None
    """Where batch jobs write their Prometheus textfiles; default <data_dir>/metrics."""

    grpc_address: str = GRPC_ADDRESS
    """Where `recsvc serve` listens (host:port; port 0 picks a free one)."""

    metrics_port: int = 9464
    """Prometheus metrics HTTP port of `recsvc serve` (0: none)."""

    tls_cert_file: Path | None = None
    """Server certificate chain (PEM): with `tls_key_file`, `recsvc serve` speaks TLS only."""

    tls_key_file: Path | None = None
    """The server certificate's private key (PEM)."""

    tls_client_ca_file: Path | None = None
    """CA bundle (PEM) for mutual TLS: every caller must present a certificate it signed."""

    auth_tokens_file: Path | None = None
    """Bearer tokens the service accepts, one per line (blank lines and # comments ignored);
    with `auth_tokens`, every call must carry `authorization: Bearer <token>`."""

    auth_tokens: str | None = None
    """Bearer tokens, comma-separated (RECSVC_AUTH_TOKENS), beside or instead of the file."""

    auth_health_open: bool = True
    """Health checks answer without a token (for load balancers' and kubelets' probes)."""

    metrics_address: str = "127.0.0.1"
    """Where the metrics HTTP server listens (0.0.0.0 in a container, for the scraper)."""

    workers: int = Field(1, ge=1, le=64)
    """Server processes sharing the gRPC port (SO_REUSEPORT); one per core uses them all."""

    event_loop: Literal["asyncio", "uvloop"] = "asyncio"
    """The event loop a worker serves on: Python's own, or uvloop's (libuv); grpc.aio runs on
    either (`make bench` measures both transports' echo floors)."""

    max_concurrent_rpcs: int = Field(256, ge=1)
    """RPCs a worker holds in progress; more wait in grpc's queue (bounds memory)."""

    overload_lag_ms: float = Field(50.0, gt=0)
    """When a worker's event loop falls this far behind, it refuses new calls with
    RESOURCE_EXHAUSTED until it catches up (callers back off instead of timing out)."""

    compiled_models: bool = True
    """Score with the models compiled to native code (lleaves, verified against LightGBM at
    load); False: LightGBM's own predict."""

    compiled_cache: Path | None = None
    """Where models compiled to native code are kept between runs, shared by the processes of
    a machine; default $XDG_CACHE_HOME/recsvc/compiled (~/.cache/recsvc/compiled)."""

    sim_members: int | None = Field(None, ge=1)
    """Members `recsvc features` simulates when there are no tables (its --members wins);
    default 20,000."""

    model_refresh_seconds: float = 10.0
    """How often the service looks for a newly promoted model version."""

    drain_notice_seconds: float = Field(1.0, ge=0, le=60)
    """On SIGTERM, how long a worker keeps answering every call after its health turned
    NOT_SERVING, so callers polling health see it before new calls are refused (set it to
    the load balancer's health-check period); then calls in progress get 5 s to finish."""

    @property
    def registry_dir(self) -> Path:
        return self.model_registry or Path(self.data_dir) / "models"

    @property
    def job_metrics_dir(self) -> Path:
        return self.metrics_dir or Path(self.data_dir) / "metrics"


def load_settings(**overrides: object) -> Settings:
    """Read the environment once; a bad value fails with the variable's name. An override
    that is None (a command-line option not given) leaves the environment's value."""
    given = {name: value for name, value in overrides.items() if value is not None}
    try:
        return Settings(**given)  # type: ignore[arg-type]
    except ValidationError as exc:
        msgs = [f"RECSVC_{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()]
        raise ConfigError("\n".join(msgs)) from None
