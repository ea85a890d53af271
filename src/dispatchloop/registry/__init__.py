"""Model versions, aliases, atomic promotion, rollback, publication."""
