"""The HTTP layer: every Starlette module, over the shared kit in :mod:`.kit`."""
