"""The training loop (``train``), its optimizer and schedules, and its TensorBoard log.

Imports ``figures`` and the layers below.
"""
