"""The ``ingress-box`` command line: one module per command family over :mod:`.common`."""

from .main import main

__all__ = ["main"]
