"""The upstream pool, retries and key failover, circuit breakers, MCP."""
