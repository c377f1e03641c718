"""Regression data sets, all offline: generated from stated ODE models, or shipped."""
from __future__ import annotations

from .dataset import Dataset, split_standardise
from .registry import NAMES, load

__all__ = ["Dataset", "NAMES", "load", "split_standardise"]
