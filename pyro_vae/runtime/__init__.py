"""Where and how code runs: devices, seeded random streams, and the processes of a torchrun job.

The lowest layer: it imports nothing else of pyro_vae.
"""
