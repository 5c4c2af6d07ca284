"""Train the models: point-in-time training sets from the feature store, LightGBM fits judged
against their baselines, and promotion of each model that passes its gate. The same job as
`recsvc train` (its options, its exit codes), for schedulers that run a script.

    python training/train.py [--model propensity|churn] [--as-of DATE] [--engine dask ...]
"""

from __future__ import annotations

import sys

from recsvc.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
