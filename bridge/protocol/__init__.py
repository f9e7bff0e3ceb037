"""Wire formats, sans-I/O: server-sent events, header lists."""
