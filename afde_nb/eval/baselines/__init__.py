"""Baselines afde-nb is compared with: one-shot (no fine-tuning) pruning and folding, acting on the
same groups afde-nb lumps in any model (:func:`afde_nb.models.capture.capture`: a plain stack's
hidden layers, a residual block's or a transformer's feed-forward units, a CNN's channels, a gated
MLP's units: gate row, up row and down column together, an inverted-residual block's expanded
channels: producer row, depthwise kernel and SE gate row with the consumer's and fc1's columns).

Every method takes the model and an ``amount`` in [0, 1], never modifies the model, and returns a
:class:`Pruned` holding a copy (a plain stack's as a new plain ``nn.Sequential``):

* :func:`magnitude_prune` -- unstructured |W| pruning, per layer or global (masked);
* :func:`wanda_prune` -- unstructured Wanda, |W| * input norm per output row (masked);
* :func:`structured_prune` -- whole hidden neurons removed by a norm or Wanda score (dense, smaller);
* :func:`flap_prune` -- FLAP: whole units by fluctuation, adaptive across layers, bias compensation (dense, smaller);
* :func:`fold_prune` -- k-means model folding of hidden neurons (dense, smaller);
* :func:`match_params` -- any of these at the amount giving the most parameters <= a target;
* :func:`repair_pruned` -- the least-squares repair every method (afde-nb too) gets.
"""
from __future__ import annotations

from ._common import Pruned, count_params
from .flap import flap_prune, flap_scores
from .folding import fold_prune, kmeans
from .magnitude import magnitude_prune
from .match import match_params
from .repair import repair_pruned
from .structured import structured_prune
from .wanda import wanda_prune, wanda_scores

__all__ = ["Pruned", "count_params", "flap_prune", "flap_scores", "fold_prune", "kmeans", "magnitude_prune",
           "match_params", "repair_pruned", "structured_prune", "wanda_prune", "wanda_scores"]
