"""Optuna studies over the DQN hyperparameters (never over the environment)."""
