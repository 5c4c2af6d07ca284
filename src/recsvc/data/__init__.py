"""The canonical loyalty data model and the two ways to fill it (simulator, import)."""
