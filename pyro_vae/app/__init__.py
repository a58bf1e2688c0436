"""``pyro-vae serve``: the latent-space explorer in the browser (needs the [app] extra).

Imports ``training``'s layers below it; nothing imports it but the CLI.
"""
