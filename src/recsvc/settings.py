"""Deployment settings: one typed object read once from the environment (RECSVC_*) at start."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from recsvc.errors import ConfigError


class Settings(BaseSettings):
    """Where recsvc keeps its data and which stores it talks to."""

    model_config = SettingsConfigDict(env_prefix="RECSVC_", frozen=True, extra="ignore")

    data_dir: Path = Field(Path("data"), description="Root of tables, oracle, offline features and the Feast registry.")
    """Root of the canonical tables, the oracle files, offline features and the Feast registry."""

    feature_repo: Path = Field(Path("feature_repo"), description="The Feast repository (feature_store.yaml + definitions).")
    """The Feast repository: feature_store.yaml and the feature definitions."""

    redis_url: str | None = Field(None, description="redis://host:port/db; when set, Feast's online store is Redis.")
    """When set (redis://[:password@]host:port/db), the online store is Redis instead of SQLite."""

    feast_project: str = Field("recsvc", description="Feast project name (namespaces online keys).")
    """Feast project name; it namespaces every online-store key, so tests use their own."""

    programme: Path | None = Field(None, description="Programme rules file; default: packaged programme.toml.")
    """Programme rules file (TOML); the packaged defaults when unset."""


def load_settings(**overrides: object) -> Settings:
    """Read the environment once; a bad value fails with the variable's name."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        msgs = [f"RECSVC_{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()]
        raise ConfigError("\n".join(msgs)) from None
