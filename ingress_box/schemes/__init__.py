"""The verification schemes behind :mod:`ingress_box.signatures` (import from there).

``base`` holds the shared types and helpers; ``keyed`` the param-driven schemes (hmac,
shared-secret, none); ``providers`` the ones a provider defines (standard-webhooks, stripe, twilio).
"""
