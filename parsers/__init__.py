"""Built-in parsers: one module per plugin, each runnable as ``python -m parsers.NAME``."""
