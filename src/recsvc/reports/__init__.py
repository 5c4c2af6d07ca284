"""Business reports over the canonical tables: each a `recsvc` subcommand writing Markdown, CSV
and plots under `<data_dir>/reports/<name>/`."""
