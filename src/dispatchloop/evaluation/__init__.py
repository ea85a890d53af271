"""Paired simulator A/B, off-policy estimates, live shadow, promotion gates."""
