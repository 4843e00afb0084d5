"""Serving a policy over the network (``envactor serve``): the websocket ``server`` with its
``batching`` and ``requests``, the ``client``, ``remote`` (a served policy as a ``Policy``) and
the msgpack ``wire`` format. Loaded on import: websockets is needed only here.
"""
