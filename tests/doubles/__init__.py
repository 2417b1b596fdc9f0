"""Test doubles of the systems a bridge talks to: real HTTP servers on 127.0.0.1, one module per
system, all built on `base` (`HttpDouble` serves the API, `Emitter` posts the webhooks).
"""
