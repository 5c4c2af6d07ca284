"""The gRPC transport: a thin layer between protobuf and the application.

`servicer` (each RPC: convert, call the dataplane, convert back), `converters` (protobuf <->
plain values), `errors` (the one table from recsvc's errors to gRPC status), `bounds` (what a
request may hold), `server` (the grpc.aio server: health, reflection, model refresh, drain),
`main` (`recsvc serve`), `security` (TLS and tokens), `channel` and `client` (how callers reach
the service, `recsvc client`).
"""

# The public modules: another package imports only these, and of them only names without a leading
# underscore (tests/test_layers.py checks both). The package's own: bounds, converters, errors,
# security, server, servicer.
__all__ = ["channel", "client", "main"]
