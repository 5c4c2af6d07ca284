# Run from the repository root after `make features` (default data):
#   .venv/bin/python bench/results/propensity_points_centre.py
"""How much of the propensity model's gap to the oracle does the points-centre share close?

Trains the production recipe twice on the same split of the default data: with every input,
and with the points-centre view counts blanked (so both shares are missing, as on data without
surfaces). Prints test ROC-AUC of each and the oracle's.
"""
import time

import numpy as np
from sklearn.metrics import roc_auc_score

from recsvc.models import inputs
from recsvc.models import training as T
from recsvc.models.jobs import open_context
from recsvc.settings import load_settings

s = load_settings()
ctx = open_context(s)
d = s.data_dir
limit = T.data_limit(d, None)
t0 = time.time()
frame, bounds = T.propensity_frame(d, limit, T.TrainOptions())
feats = T.with_features(ctx.history, "propensity_v1", frame)
print(f"rows {len(feats):,}, features in {time.time() - t0:.0f} s", flush=True)
split = T.Split(feats, feats.part.to_numpy(), feats.label.to_numpy().astype(np.int64),
                (None, limit), bounds)
te = split.rows("test")
oracle_auc = roc_auc_score(split.label[te], T._oracle_scores(d, "propensity", feats[te]))
print(f"oracle test AUC {oracle_auc:.4f}", flush=True)

base = inputs.frame_columns(feats)
for name, blank in (("all inputs", ()),
                    ("without points-centre views",
                     ("points_centre_views_90d", "points_centre_views_365d"))):
    cols = dict(base)
    for c in blank:
        cols[c] = np.full(len(feats), np.nan)
    prep = T._prepare_propensity(cols, split, ctx.programme)
    tr, va = split.rows("train"), split.rows("valid")
    b = T.fit_booster(prep.X[tr], split.label[tr], prep.X[va], split.label[va], prep.names,
                      inputs.CATEGORICAL, T.MONOTONE["propensity"], T.TrainOptions())
    auc = roc_auc_score(split.label[te], T.margin(b, prep.X, None)[te])
    print(f"{name}: test AUC {auc:.4f}, gap to the oracle {oracle_auc - auc:.4f}, "
          f"{b.best_iteration} trees", flush=True)
