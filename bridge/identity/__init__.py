"""Who is asking: actors, authentication, gateway keys. Pure; below the core."""
