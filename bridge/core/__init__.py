"""The core: interceptions, the loop, the relay. It knows no web framework.

The same core serves the HTTP gateway (through an ASGI adapter in
:mod:`bridge.http.app`) and Trio programs that embed bridge (:func:`bridge.open_bridge`).
"""
