"""Built-in collectors: one module per plugin, each runnable as ``python -m collectors.NAME``."""
