"""Utilities with no dependency on the rest of the package (``python -m maskformer_d2.utils.env``)."""
