"""The batch commands of `recsvc`, one module each (`recsvc.cli` names them): `simulate`,
`import_transactions`, `features` (snapshots, Feast, materialisation), `models` (train, retrain,
promote, score-batch), `fraud_flags`, `nudges`, `catalogue_report`, `liability_report`. Each
module's `register()` adds its command's parser; the computation it runs lives in
`recsvc.offline`, `recsvc.app` or `recsvc.reports`.
"""

# The public modules: another package imports only these, and of them only names without a leading
# underscore (tests/test_layers.py checks both).
__all__ = ["catalogue_report", "features", "fraud_flags", "import_transactions",
           "liability_report", "models", "nudges", "simulate"]
