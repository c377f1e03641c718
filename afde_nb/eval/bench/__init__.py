"""Evaluation: afde-nb against pruning and folding at matched parameter counts."""
from __future__ import annotations

from .tradeoff import BASELINES, tradeoff

__all__ = ["BASELINES", "tradeoff"]
