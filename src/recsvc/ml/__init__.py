"""Machine learning at runtime: what training and serving share, and nothing that trains.

`inputs` (the model matrices, built one way for both), `propensity_rows` (the propensity
model's rows at serving time, from blocks encoded ahead), `runtime` (calibration, the served
BG/NBD and Pareto/NBD features), `scoring` (the churn and propensity scorers), `attribution`
(per-prediction drivers), `btyd` and `pareto_nbd` (the buy-till-you-die models) over
`btyd_base` (what they share: purchase histories, the fit's inputs and optimiser, the
parameters' base), `model_text` (LightGBM model files read as text: what lleaves supports,
probe rows).
"""

# The public modules: another package imports only these, and of them only names without a leading
# underscore (tests/test_layers.py checks both). The package's own: btyd_base.
__all__ = ["attribution", "btyd", "inputs", "model_text", "pareto_nbd", "propensity_rows",
           "runtime", "scoring"]
