"""Datasets on the device: torchvision's datasets, the user's own image folders and tensor
files, how pixels become the likelihood's data, and the batches of a training run.

Imports ``models`` (a likelihood says which data it takes) and ``runtime``.
"""
