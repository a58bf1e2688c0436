"""The ``pyro-vae`` command line: parsing, one-line errors, the subcommands.

The top layer.
"""
