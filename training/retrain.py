"""The scheduled retraining: features -> train -> evaluate -> gate -> promote, under a lock so
that two runs never overlap. The same job as `recsvc retrain` (its options, its exit codes:
0 promoted or nothing to promote, 3 refused by the gate, 4 another run holds the lock).

    python training/retrain.py [--as-of DATE] [--engine dask --scheduler ADDRESS]
"""

from __future__ import annotations

import sys

from recsvc.cli import main

if __name__ == "__main__":
    sys.exit(main(["retrain", *sys.argv[1:]]))
