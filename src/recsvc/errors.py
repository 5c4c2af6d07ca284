"""The project's own exceptions: the one vocabulary every layer raises and the transport maps."""

from __future__ import annotations


class RecsvcError(Exception):
    """Base of every error recsvc raises on purpose."""


class ConfigError(RecsvcError):
    """Configuration or programme rules are invalid; the message names the key."""


class InvalidArgument(RecsvcError):
    """A caller's input is invalid; `field` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ImportFailed(RecsvcError):
    """A transaction file could not be imported; nothing was written."""


class EngineUnavailable(RecsvcError):
    """A batch job's Dask cluster had no live worker for longer than the job waits for one;
    the partitions not yet done were cancelled."""


class DataMissing(RecsvcError):
    """A job needs tables or features that have not been built yet."""


class PromotionRefused(RecsvcError):
    """A model version was not promoted (gate not passed, nothing to roll back to); the
    production pointer is unchanged and the message says why."""


class ArtefactInvalid(RecsvcError):
    """A model artefact is broken or does not match its manifest or feature service; the
    message names what is wrong. It is never served."""


class FeatureStoreError(RecsvcError):
    """Feast failed in a way no more specific error names."""


class FeatureStoreUnavailable(FeatureStoreError):
    """The online store (Redis or the SQLite file) did not answer; callers may degrade."""


class CapStoreUnavailable(RecsvcError):
    """The frequency-cap store (Redis or the SQLite file) did not answer in time: nudges are
    withheld rather than risk exceeding a cap."""


class NotFound(RecsvcError):
    """A named thing (an item, a model version) does not exist."""


class Overloaded(RecsvcError):
    """The service is behind on its work; the caller should back off and retry."""


class DeadlineExceeded(RecsvcError):
    """The caller's deadline passed before the work started (the request waited too long)."""
