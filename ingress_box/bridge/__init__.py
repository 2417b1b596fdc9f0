"""Bridges: a WhatsApp gateway session and a Chatwoot API inbox, joined both ways.

The one registered handler, ``bridge`` (:mod:`.handler`), gets both instances' events:

- a gateway's webhook (``waha``, ``evolution``, ``gowa``, ``openwa``) is read into one
  :class:`~.normalize.WhatsAppMessage` (:mod:`.normalize`) and posted to Chatwoot
  (:mod:`.inbound`, over the REST client in :mod:`.chatwoot`);
- Chatwoot's webhook (``chatwoot``) is an agent's message to send through the gateway's API
  (:mod:`.outbound`, over :mod:`.gateways`), or a handover change of a conversation.

Each event runs in its lane (one chat, one conversation), so a chat's messages are handled one at
a time and in order; the message links of :mod:`ingress_box.store.bridge_links` make each message
cross once, whatever the retries, and keep the bridge's own messages from coming back as echoes.
"""
