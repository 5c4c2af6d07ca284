"""Models: the BG/NBD baseline (btyd), evaluation reports (evaluation), the registry (registry).

Submodules are imported by name, not re-exported here: the service needs the registry without
paying for matplotlib and scikit-learn at start-up.
"""
