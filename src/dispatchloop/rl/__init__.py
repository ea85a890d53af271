"""Reward, featurizer, Q-network, DQN training and model artifacts."""
