"""The application layer: the answers the RPCs and the batch jobs share.

`dataplane` (`Dataplane`: the core's rules and the models' scores over a member's profile,
degraded answers when a dependency fails) over `answering` (what every answer shares: the
member's arm and profile, index factors, propensity, the Stamp) with `reads` (the online read
behind its breaker) and `nudge_answers` (GetNudges within the frequency caps), `answers` (what
it is asked and answers, as plain values, and the degraded reasons), `catalogue` (the items
held in memory, swapped whole on a reload), `profiles` (a member's `Context` from its features,
kept while they hold), `ports` (`FeatureSource`, `PropensityModel`, `CapStore`: what the
adapters implement), `breaker` (pauses a failing dependency). No gRPC and no storage code here.
"""

# The public modules: another package imports only these, and of them only names without a leading
# underscore (tests/test_layers.py checks both). The package's own: breaker, nudge_answers,
# profiles, reads.
__all__ = ["answering", "answers", "catalogue", "dataplane", "ports"]
