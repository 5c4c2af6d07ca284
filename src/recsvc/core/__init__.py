"""The pure core: formulas and rules over plain numbers and arrays; no I/O of any kind."""

# The public modules: another package imports only these, and of them only names without a leading
# underscore (tests/test_layers.py checks both).
__all__ = ["cart", "catalogue", "elementwise", "experiments", "fraud", "index", "ledger",
           "liability", "nudges", "ranking", "redemption", "segments"]
