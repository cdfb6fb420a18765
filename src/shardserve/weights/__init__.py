"""Checkpoints: the weight protocol (params.py), loaders, random init, the pre-sharded format.

Kept free of imports, so torch-free pieces (manifest.py, catalog.py) can be used without torch.
"""
