"""What scoring needs at serving time and training shares: calibration, the served BG/NBD.

The server process imports this, never `recsvc.models.training` (which brings the evaluation
reports, plotting and scikit-learn along).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from recsvc.models.btyd import BgNbd

F64 = npt.NDArray[np.float64]


def calibrated(raw: F64, platt: Mapping[str, float]) -> F64:
    """Probabilities from raw margins with the Platt scaling fitted at training."""
    z = platt["a"] * raw + platt["b"]
    return 1.0 / (1.0 + np.exp(-z))


class WeeklyBtyd:
    """A BTYD model (BG/NBD, Pareto/NBD) fitted in weeks, answering in days (the feature
    store's unit)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def p_alive(self, x: F64, t_x: F64, T: F64) -> F64:
        return np.asarray(self.model.p_alive(x, t_x / 7.0, T / 7.0), dtype=np.float64)

    def expected_purchases(self, t: float, x: F64, t_x: F64, T: F64) -> F64:
        return np.asarray(self.model.expected_purchases(t / 7.0, x, t_x / 7.0, T / 7.0),
                          dtype=np.float64)

    def p_purchase_within(self, t: float, x: F64, t_x: F64, T: F64) -> F64:
        return np.asarray(self.model.p_purchase_within(t / 7.0, x, t_x / 7.0, T / 7.0),
                          dtype=np.float64)


def weekly_bgnbd(extra: Mapping[str, Any]) -> WeeklyBtyd | None:
    """The BG/NBD saved with a churn manifest, for serving the same derived inputs."""
    params = extra.get("bgnbd_weekly")
    return WeeklyBtyd(BgNbd.from_dict(params)) if params else None
