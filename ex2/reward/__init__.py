"""Rewards for ex2 train: plain trl reward callables scoring descriptions against a VLM's view of the
concept's images; the base class and shared helpers (base), one module per reward, and the registry
that names them (registry)."""

from ex2.reward.registry import REWARD_NAMES, REWARDS, build_reward, reward_help

__all__ = ["REWARDS", "REWARD_NAMES", "build_reward", "reward_help"]
