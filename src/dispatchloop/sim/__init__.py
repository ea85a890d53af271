"""Gymnasium simulator of dispatch, scenarios calibrated from the store, baselines."""
