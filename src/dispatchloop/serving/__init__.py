"""What a dispatch system embeds or calls: route, featurize, score, explore, and log honestly.

Never imports torch (NumPy only; a test checks it): a dispatch system can embed
it without the training stack. See `dispatcher.py` for the guarantees.
"""
