"""A deterministic fake provider, replaying the scenarios in fixtures/."""
