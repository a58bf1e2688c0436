"""Pictures of a model and of a run, as matplotlib Figures (``plots``) and as the run's files.

Imports ``evaluation`` and the layers below.
"""
