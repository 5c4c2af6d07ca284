"""recsvc: recommendation and redemption scoring for loyalty-points programmes."""

__version__ = "0.1.0"
