"""Helpers for tests, benchmarks and the demo (as optuna.testing): a local broker,
realistic event factories. Nothing in the daemon imports this package."""
