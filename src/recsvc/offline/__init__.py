"""Offline computation: the batch work that makes the data, the features and the models.

`simulate` (a programme with known ground truth), `importer` (a real transaction log), `btyd_log`
(real-shaped synthetic logs), `compute` (dated feature snapshots), `training` (training sets,
fits, baselines, the gate), `evaluation` (metrics and reports of a model), `fraud` (fraud flags:
rules and an isolation forest). The server process imports none of it.
"""
