"""A run directory and its settings: the training options (``TrainConfig``), presets,
checkpoints, the files of a run (config.json, metrics.jsonl) and the lock of its one writer.

Imports ``data``, ``models`` and ``runtime``.
"""
