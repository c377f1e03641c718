"""Regression data sets: generated from stated ODE models, shipped, or read from the data home; text
corpora for language models (``load_text``), read from the data home."""
from __future__ import annotations

from .dataset import Dataset, split_standardise
from .home import data_home
from .registry import NAMES, PAPER_NAMES, load
from .text import Text, load_text

__all__ = ["Dataset", "NAMES", "PAPER_NAMES", "data_home", "load", "split_standardise", "Text", "load_text"]
