"""The canonical loyalty data model: the tables' Arrow schemas and their reading and writing
(`schema`), their columns as numpy arrays (`columns`), and what a table set was made from
(`provenance`). The simulator and the importer that fill them are in `recsvc.offline`.
"""

# The public modules: another package imports only these, and of them only names without a leading
# underscore (tests/test_layers.py checks both).
__all__ = ["columns", "provenance", "schema", "views"]
