"""Adapters: every piece of I/O behind a small interface.

`feast` (the Feast feature store: configuration, definitions, reads), `materialise` (the online
store filled from the snapshots, by ranges on an engine; the fill mark) with `online_write` (one
view's rows written in Feast's layout; clearing), `feature_sources` (features through the Feast
SDK: online, and point in time for the jobs), `online` (the fast online readers' interface,
their plans from the Feast registry, `open_reader`) with `online_plan` (what a read reads,
compiled once per request shape) and `row_cache` (the readers' member cache), `online_redis` and
`online_sqlite` (the readers), `feast_codec` (Feast's value and entity key encoding),
`redis_write` (materialisation into Redis in Feast's layout) with `resp_columns` (its commands
and values built as byte columns), `serving_store` (the serving process's store, no offline
engine), `caps` (frequency caps: what the stores share, and which one) with `caps_redis` and
`caps_sqlite` (the stores), `registry` (versioned model files and the production pointer),
`compiled` (models compiled to native code) with `compile_cache` (their cache directory and the
compiling child process), `model_holder` (production models held in memory, swapped when the
registry moves), `context` (what a job or the server opens first: settings, programme, store,
registry).
"""

# The public modules: another package imports only these, and of them only names without a leading
# underscore (tests/test_layers.py checks both). The package's own: feast_codec, file_store,
# online_plan, online_redis, online_sqlite, redis_write, resp_columns, serving_store.
__all__ = ["caps", "caps_redis", "caps_sqlite", "compile_cache", "compiled", "context", "feast",
           "feature_sources", "manifest", "materialise", "model_holder", "online", "online_write",
           "registry", "row_cache"]
