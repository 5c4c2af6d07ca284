# Run from the repository root after `make features` (default data): .venv/bin/python bench/results/propensity_freshness.py
"""Does fresher input at exposure time close the propensity gap to the oracle?"""
import datetime as dt, sys, time
import numpy as np, pandas as pd
from sklearn.metrics import roc_auc_score
from recsvc.settings import load_settings
from recsvc.models.jobs import open_context
from recsvc.models import training as T, inputs
from recsvc.data import schema
from recsvc.core.cart import PointsBalance
from recsvc.core import ledger

s = load_settings(); ctx = open_context(s); d = s.data_dir
limit = T.data_limit(d, None)
t0 = time.time()
frame, bounds = T.propensity_frame(d, limit, T.TrainOptions())
feats = T.with_features(ctx.history, "propensity_v1", frame)
print("rows", len(feats), "features", time.time() - t0, flush=True)
ent = frame[["member_id", "event_timestamp"]].reset_index(drop=True).assign(_row=np.arange(len(frame)))
lots = ctx.store.get_historical_features(entity_df=ent, features=["member_expiry:expiry_at_s", "member_expiry:expiry_points"]).to_df().sort_values("_row").reset_index(drop=True)
print("lots", time.time() - t0, flush=True)
# same-day item state: the row stamped at the next midnight after the exposure
idays = schema.read_table(d, "item_days", ["item_id", "ts", "discount_coefficient"]).to_pandas()
day_end = (feats.event_timestamp.dt.floor("D") + pd.Timedelta(days=1))
today = feats[["item_id"]].assign(ts=day_end).merge(idays, on=["item_id", "ts"], how="left")
print("same-day discount found", today.discount_coefficient.notna().mean(), "differs", (today.discount_coefficient.to_numpy() != feats.discount_coefficient.to_numpy()).mean())
# expiring by the end of next month, from the lots reconciled with the live balance
exp_soon = np.zeros(len(feats))
ts = feats.event_timestamp
for i, (at, pts, bal, t) in enumerate(zip(lots.expiry_at_s, lots.expiry_points, feats.balance, ts)):
    if at is None or bal != bal:
        continue
    now = t.to_pydatetime()
    b = PointsBalance.reconcile(list(zip(at, pts)), int(bal), now)
    m = now.month + 1; y = now.year + (m > 12); m = (m - 1) % 12 + 1
    end_next = dt.datetime(y + (m == 12), m % 12 + 1, 1, tzinfo=dt.UTC)
    exp_soon[i] = sum(p for when, p in b.buckets if when <= end_next)
print("expiring", time.time() - t0, "mean", exp_soon.mean(), "vs 30d", np.nanmean(feats.points_expiring_30d.astype(float)), flush=True)

split = T.Split(feats, feats.part.to_numpy(), feats.label.to_numpy().astype(np.int64), (None, limit), bounds)
te = split.rows("test")
oracle = T._oracle_scores(d, "propensity", feats[te])
print("oracle AUC", roc_auc_score(split.label[te], oracle))

def run(name, cols):
    prep = T._prepare_propensity(cols, split, ctx.programme)
    tr, va = split.rows("train"), split.rows("valid")
    b = T.fit_booster(prep.X[tr], split.label[tr], prep.X[va], split.label[va], prep.names, inputs.CATEGORICAL, T.MONOTONE["propensity"], T.TrainOptions())
    raw = T.margin(b, prep.X, None)
    print(name, "test AUC", round(roc_auc_score(split.label[te], raw[te]), 4), "trees", b.best_iteration, flush=True)

base = inputs.frame_columns(feats)
variants = sys.argv[1:] or ["base", "discount", "expiring", "both"]
for v in variants:
    cols = dict(base)
    if v in ("discount", "both"):
        cols["discount_coefficient"] = np.where(today.discount_coefficient.notna(), today.discount_coefficient.to_numpy(), cols["discount_coefficient"])
    if v in ("expiring", "both"):
        cols["points_expiring_30d"] = exp_soon
    run(v, cols)
