"""Values the light command-line paths share with the heavy modules, written once here.

`recsvc client` must start fast, so it cannot import the pydantic settings or programme rules,
nor the numpy dataplane, just to learn a default address, the nudge channels or the bounds of
a recommendation list; those modules take their values from here instead. It imports nothing.
"""

from __future__ import annotations

GRPC_ADDRESS = "127.0.0.1:50051"
"""Where `recsvc serve` listens and `recsvc client` calls, unless $RECSVC_GRPC_ADDRESS says."""

CHANNELS = ("in_app", "push", "email", "sms")
"""The channels a nudge can be sent on (programme caps may name one, or "*" for all)."""

DEFAULT_RECOMMENDATIONS = 20
"""Options RecommendRedemptions returns when the caller sends no limit (0)."""

MAX_RECOMMENDATIONS = 200
