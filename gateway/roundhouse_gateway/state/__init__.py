"""Where limits, budgets and usage are kept: an embedded SQLite file for one gateway, a Redis-protocol
server shared by replicas, and what the gateway counts itself while its store is away (docs/keys.md)."""
