"""Rewards for ex2 train: plain trl reward callables scoring descriptions against a VLM's view of the concept's images."""
