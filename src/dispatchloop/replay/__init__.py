"""The replay store: every valid dispatch outcome event, once, durably."""
