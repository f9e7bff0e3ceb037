"""The gateway end to end over its three APIs, with the official SDKs and real CLIs."""
