"""Adapters: every piece of I/O behind a small interface.

`feast` (the Feast feature store: configuration, definitions, offline reads, materialisation),
`online` (the fast Redis and SQLite online readers and their member cache), `redis_write`
(materialisation into Redis in Feast's layout), `serving_store` (the serving process's store,
no offline engine), `caps` (frequency caps in Redis or SQLite), `registry` (versioned model
files and the production pointer), `compiled` (models compiled to native code),
`model_holder` (production models held in memory, swapped when the registry moves).
"""
