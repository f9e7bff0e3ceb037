"""What the core calls out to: the upstream pool, its resilience, MCP servers."""
