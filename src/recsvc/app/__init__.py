"""The application layer: the answers the RPCs and the batch jobs share.

`dataplane` (`Dataplane`: a member's profile from its features, the core's rules, the models'
scores, degraded answers when a dependency fails), `answers` (what it is asked and answers, as
plain values, and the degraded reasons), `catalogue` (the items held in memory, swapped whole on
a reload), `ports` (`FeatureSource`, `PropensityModel`, `CapStore`: what the adapters
implement), `breaker` (pauses a failing dependency). No gRPC and no storage code here.
"""
