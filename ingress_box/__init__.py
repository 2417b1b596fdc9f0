"""ingress-box: a durable, idempotent inbound-webhook appliance (one process, one SQLite file)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ingress-box")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
