"""Feature computation (dated snapshots) and the Feast feature store glue."""
