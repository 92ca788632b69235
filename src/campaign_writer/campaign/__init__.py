"""The Campaign wire: everything that speaks Adobe Campaign's SOAP API.

- ``soap``: envelopes out, hardened parsing in;
- ``transport``: the :class:`~campaign_writer.campaign.transport.Transport` seam and its
  aiohttp implementation;
- ``client``: builds a request, sends it through the throttle, renews credentials once;
- ``auth``: session, bearer and IMS logons;
- ``outcome`` and ``codes``: the pure classification of an answer;
- ``documents``, ``xtktypes`` and ``xmltext``: what a record looks like on the wire.

Delivery (``dispatcher``, ``isolation``) decides what to send and when; this package only
says how, and what the answer means.
"""
