"""The application layer: the answers the RPCs and the batch jobs share.

`dataplane` (`Dataplane`: a member's profile from its features, the core's rules, the models'
scores, degraded answers when a dependency fails), `breaker` (the circuit breaker that pauses a
failing dependency). No gRPC and no storage code here: the transport calls in, the adapters are
reached through the ports `dataplane` declares.
"""
