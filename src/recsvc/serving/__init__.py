"""The gRPC service: a thin transport over the pure core, the models and the feature store."""
