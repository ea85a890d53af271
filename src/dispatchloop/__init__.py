"""dispatchloop: closes the learning loop of a reinforcement-learning dispatcher."""

__version__ = "0.1.0"
