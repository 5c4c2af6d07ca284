"""Offline computation: the batch work that makes the data, the features and the models.

`simulate` (a programme with known ground truth, day by day) over `population` (its members and
catalogue), `behaviour` (the ground truth), `abuse` (the planted abusers) and `sim_tables` (what
it writes), `importer` (a real transaction log, read by `import_csv` and turned into tables by
`import_ledger`), `btyd_log` (real-shaped synthetic logs), `compute` (the members' views and the
column helpers), `item_views` and `expiry` (the other views' values) over `timeline` (windowed
counts and sums of an event table), `snapshots` (the feature job: spans, ranges on an engine,
the offline store's files and manifest), `training` (a model trained, judged against its
baselines, registered) over `training_sets` (point-in-time training sets) and `fitting`
(boosters, calibration, baselines), `evaluation` (a model's metrics against its baselines) and
`evaluation_report` (their plots and Markdown), `batch_scoring` (score-batch), `fraud` (fraud
flags: rules and an isolation forest). The server process imports none of it.
"""

# The public modules: another package imports only these, and of them only names without a leading
# underscore (tests/test_layers.py checks both). The package's own: abuse, behaviour, btyd_log,
# evaluation, evaluation_report, fitting, import_csv, import_ledger, item_views, population,
# sim_tables, timeline, training_sets.
__all__ = ["batch_scoring", "compute", "expiry", "fraud", "importer", "simulate", "snapshots",
           "training"]
