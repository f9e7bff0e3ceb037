"""The mock upstream, the foreign upstream and the scenario fixtures."""
