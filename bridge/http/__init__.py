"""The gateway over HTTP: the ASGI entry that owns bridged requests, Quart for the rest."""
