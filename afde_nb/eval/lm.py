"""A small character-level transformer language model, trained here with a fixed seed, and its
validation perplexity: what ``afde bench --lm`` compresses.

:class:`CharLM` is a GPT-style decoder: token and learned position embeddings, ``layers`` pre-norm
blocks ``x + attn(ln1(x))``, ``x + mlp(ln2(x))`` (causal multi-head attention), a final LayerNorm
and an untied output layer. Its MLP comes in two variants:

* ``"gelu"`` (GPT-2): ``fc2(gelu(fc1(x)))``, ``d_ff`` hidden units: a group afde-nb lumps;
* ``"gated"`` (LLaMA): ``down(silu(gate(x)) * up(x))``, ``d_ff`` hidden units (take about 2/3 of
  the GELU width for the same parameters): a gated unit, which afde-nb does not lump yet.

Written so that torch.fx traces it (no shape unpacking, no data-dependent branches): afde-nb and
its baselines find the MLP groups by tracing, Torch-Pruning by its own trace.

Perplexity is ``exp`` of the mean cross-entropy of every next character of a text, read in
non-overlapping windows of ``context + 1`` characters (each character predicted from the earlier
ones of its window).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import InvalidArgumentError

MLPS = ("gelu", "gated")


@dataclass(frozen=True)
class LMConfig:
    """Shape of a :class:`CharLM` and how it is trained (``steps`` of AdamW on random windows of
    ``batch`` x ``context`` characters, cosine learning rate after ``warmup`` steps)."""

    vocab: int
    mlp: str = "gelu"
    layers: int = 4
    d_model: int = 128
    heads: int = 4
    d_ff: int = 512
    context: int = 128
    steps: int = 2000
    batch: int = 32
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.1

    def __post_init__(self):
        if self.mlp not in MLPS:
            raise InvalidArgumentError(f"mlp must be one of {MLPS}, got {self.mlp!r}")
        if self.d_model % self.heads:
            raise InvalidArgumentError(f"d_model ({self.d_model}) must be a multiple of heads ({self.heads})")

    def key(self) -> str:
        """A file-name-safe tag of every field."""
        return "-".join(f"{k}{v}" for k, v in asdict(self).items())


class GeluMLP(nn.Module):
    """``fc2(gelu(fc1(x)))`` (GPT-2)."""

    def __init__(self, d: int, d_ff: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d, d_ff)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(d_ff, d)

    @property
    def producers(self) -> tuple[nn.Linear, ...]:
        """The layers whose output units are the hidden units."""
        return (self.fc1,)

    @property
    def consumer(self) -> nn.Linear:
        """The layer that reads the hidden units."""
        return self.fc2

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc1(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.hidden(x))


class GatedMLP(nn.Module):
    """``down(silu(gate(x)) * up(x))`` (LLaMA; no biases, as there)."""

    def __init__(self, d: int, d_ff: int) -> None:
        super().__init__()
        self.gate = nn.Linear(d, d_ff, bias=False)
        self.up = nn.Linear(d, d_ff, bias=False)
        self.act = nn.SiLU()
        self.down = nn.Linear(d_ff, d, bias=False)

    @property
    def producers(self) -> tuple[nn.Linear, ...]:
        return (self.gate, self.up)

    @property
    def consumer(self) -> nn.Linear:
        return self.down

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.gate(x)) * self.up(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.hidden(x))


class Attention(nn.Module):
    """Causal multi-head self-attention (``scaled_dot_product_attention``)."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)  # (3, n, heads, T, d/heads)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=True)
        return self.proj(y.transpose(1, 2).flatten(2))


class Block(nn.Module):
    def __init__(self, c: LMConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(c.d_model)
        self.attn = Attention(c.d_model, c.heads)
        self.ln2 = nn.LayerNorm(c.d_model)
        self.mlp = GeluMLP(c.d_model, c.d_ff) if c.mlp == "gelu" else GatedMLP(c.d_model, c.d_ff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class CharLM(nn.Module):
    """(n, T) character ids, T <= context -> (n, T, vocab) logits of the next character."""

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.config = config
        self.tok = nn.Embedding(config.vocab, config.d_model)
        self.pos = nn.Parameter(torch.zeros(config.context, config.d_model))
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos[: idx.size(1)]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    def mlps(self) -> list[nn.Module]:
        """The MLP of every block, in order."""
        return [b.mlp for b in self.blocks]


def mlp_params(model: nn.Module) -> int:
    """Parameters of the MLPs of ``model`` (a :class:`CharLM`, or a compressed copy of one)."""
    return sum(p.numel() for b in model.blocks for p in b.mlp.parameters())


def mlp_params_with(model: CharLM, units: int) -> int:
    """Parameters of the MLPs of ``model`` with ``units`` hidden units in every block."""
    fixed = sum(m.consumer.bias.numel() for m in model.mlps() if m.consumer.bias is not None)
    return fixed + units * (mlp_params(model) - fixed) // model.config.d_ff


def init_weights(model: CharLM, seed: int) -> None:
    """GPT-2's initialisation: N(0, 0.02) weights, zero biases, residual projections scaled by
    1/sqrt(2 layers)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln" in name or name.startswith("ln_f"):
                if ".ln" in name or name.startswith("ln_f"):
                    p.fill_(1.0 if name.endswith("weight") else 0.0)
                else:
                    p.zero_()
                continue
            std = 0.02 / math.sqrt(2 * model.config.layers) if name.endswith(("proj.weight", "fc2.weight",
                                                                              "down.weight")) else 0.02
            p.normal_(0.0, std, generator=gen)


def windows(ids: np.ndarray, context: int, n: int, seed: int) -> torch.Tensor:
    """``n`` windows of ``context + 1`` consecutive ids at uniformly drawn starts (seeded), as an
    (n, context + 1) LongTensor: inputs ``[:, :-1]``, next characters ``[:, 1:]``."""
    starts = np.random.default_rng(seed).integers(0, len(ids) - context - 1, size=n)
    return torch.from_numpy(np.stack([ids[s:s + context + 1] for s in starts]))


def train_lm(config: LMConfig, train_ids: np.ndarray, seed: int = 0, log=None) -> CharLM:
    """Train a :class:`CharLM` on ``train_ids`` for ``config.steps`` AdamW steps (weight decay on
    matrices only, gradient norm clipped at 1), batches drawn with ``seed``. Deterministic given
    the seed and torch's thread count."""
    torch.manual_seed(seed)
    model = CharLM(config)
    init_weights(model, seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and n != "pos"]
    rest = [p for n, p in model.named_parameters() if p.dim() < 2 or n == "pos"]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.95))

    def lr_at(step: int) -> float:
        if step < config.warmup:
            return config.lr * (step + 1) / config.warmup
        done = (step - config.warmup) / max(1, config.steps - config.warmup)
        return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * done)))

    rng = np.random.default_rng(seed)
    model.train()
    t0 = time.perf_counter()
    for step in range(config.steps):
        starts = rng.integers(0, len(train_ids) - config.context - 1, size=config.batch)
        xy = torch.from_numpy(np.stack([train_ids[s:s + config.context + 1] for s in starts]))
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = lm_loss(model, xy)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if log is not None and (step % 200 == 0 or step == config.steps - 1):
            log(f"  step {step}/{config.steps}: loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)")
    return model.eval()


def lm_loss(model: nn.Module, xy: torch.Tensor) -> torch.Tensor:
    """Mean next-character cross-entropy of ``model`` on windows ``xy`` (n, T + 1)."""
    logits = model(xy[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), xy[:, 1:].reshape(-1))


def perplexity(model: nn.Module, ids: np.ndarray, context: int, batch: int = 64) -> float:
    """``exp`` of the mean cross-entropy over every next character of ``ids``, read in
    non-overlapping windows of ``context + 1`` (the last, shorter window included)."""
    ids = torch.as_tensor(np.asarray(ids, dtype=np.int64))
    step = context
    starts = list(range(0, len(ids) - 1, step))
    total, count = 0.0, 0
    was = model.training
    model.eval()
    try:
        with torch.inference_mode():
            full = [s for s in starts if s + context + 1 <= len(ids)]
            for k in range(0, len(full), batch):
                xy = torch.stack([ids[s:s + context + 1] for s in full[k:k + batch]])
                n = xy[:, 1:].numel()
                total += float(lm_loss(model, xy)) * n
                count += n
            tail = [s for s in starts if s + context + 1 > len(ids)]
            for s in tail:
                xy = ids[s:][None]
                n = xy.size(1) - 1
                total += float(lm_loss(model, xy)) * n
                count += n
    finally:
        model.train(was)
    return math.exp(total / count)
