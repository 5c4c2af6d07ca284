"""The pure core: formulas and rules over plain numbers and arrays; no I/O of any kind.

`index` (the recommendation index and its factors), `redemption` (the hint rule), `ranking`
(ranked options, unlocks in reach), `cart` (the points/cash split under the rules), `nudges`,
`segments` (churn segments and actions), `fraud` (the fraud rules), `liability` (the points
liability projection) with `liability_backtest` (its back-fit and backtest), `ledger` (points
lots, tiers, expiry), `catalogue` (similarity and alternates), `inventory` (the inventory
rules), `experiments` (arms), `elementwise` (the few operations the formulas use on numbers and
arrays alike).
"""

# The public modules: another package imports only these, and of them only names without a leading
# underscore (tests/test_layers.py checks both).
__all__ = ["cart", "catalogue", "elementwise", "experiments", "fraud", "index", "inventory",
           "ledger", "liability", "liability_backtest", "nudges", "ranking", "redemption",
           "segments"]
