"""Built-in receivers: one module per plugin, each runnable as ``python -m receivers.NAME``."""
