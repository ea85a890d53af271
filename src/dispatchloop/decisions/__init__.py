"""What a decision is to a model: the featurizer and the reward function.

Shared by the simulator (`sim`), training (`rl`), evaluation and serving, so none
of them has to import another to agree on what a situation looks like or what an
outcome is worth. Depends only on `events` and `settings`.
"""
