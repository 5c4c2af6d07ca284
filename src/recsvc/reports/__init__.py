"""Business reports over the canonical tables, each written as Markdown, CSV or JSON and plots
under `<data_dir>/reports/<name>/`: `catalogue` (stock, forecast, turnover and the inventory
flags per item), `liability` (the points-liability forecast and its backtest) with
`liability_book` (the ledger it reads: balances, flows, lapsing lots, the member's history, the
backtest's actuals) and `liability_render` (that forecast as JSON, Markdown and plots). Their
commands are in `recsvc.jobs`.
"""

# The public modules: another package imports only these, and of them only names without a leading
# underscore (tests/test_layers.py checks both). The package's own: liability_book,
# liability_render.
__all__ = ["catalogue", "liability"]
