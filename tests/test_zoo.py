"""The example models of afde_nb.eval.zoo: their data, training, cache and traceability."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch import nn

from afde_nb.eval import zoo
from afde_nb.errors import InvalidArgumentError

# Measured test scores (seeds 0-2): digits accuracy >= 0.996, residual MSE <= 1e-4, transformer MSE
# <= 0.007 (standardised targets: the training mean scores about 1).
GOOD_ENOUGH = {"digits_cnn": lambda s: s >= 0.95, "residual_mlp": lambda s: s <= 0.01,
               "transformer": lambda s: s <= 0.05}
INPUTS = {"digits_cnn": (1, 8, 8), "residual_mlp": (5,), "transformer": (zoo.SEQ_LEN, 3)}


@pytest.fixture(autouse=True)
def private_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("AFDE_NB_CACHE", str(tmp_path))


def _arrays(data: zoo.ExampleData) -> list[np.ndarray]:
    return [data.X_train, data.y_train, data.X_val, data.y_val, data.X_test, data.y_test]


def _model(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = {"digits_cnn": zoo.DigitsCNN(), "residual_mlp": zoo.ResidualMLP(5, 5),
             "transformer": zoo.TinySequenceTransformer(3, 2)}[name]
    return model.eval(), torch.randn(7, *INPUTS[name])


@pytest.mark.parametrize("name", zoo.EXAMPLES)
def test_data_shapes_dtypes_and_determinism(name):
    data = zoo.example_data(name)
    assert data.task == ("classification" if name == "digits_cnn" else "regression")
    sizes = [len(a) for a in _arrays(data)]
    n = sum(sizes[::2])
    assert sizes[::2] == sizes[1::2] == [int(0.7 * n), int(0.15 * n), n - int(0.7 * n) - int(0.15 * n)]
    for X in _arrays(data)[::2]:
        assert X.dtype == np.float32 and X.shape[1:] == INPUTS[name] and np.isfinite(X).all()
    if name == "digits_cnn":
        assert all(y.dtype == np.int64 and y.ndim == 1 for y in _arrays(data)[1::2])
        assert set(data.y_train) == set(range(10))
        assert 0 <= data.X_train.min() and data.X_train.max() <= 1
    else:
        assert data.y_train.dtype == np.float32 and data.y_train.ndim == 2
        np.testing.assert_allclose(data.y_train.mean(0), 0, atol=1e-5)
        np.testing.assert_allclose(data.y_train.std(0), 1, atol=1e-4)
    for a, b in zip(_arrays(data), _arrays(zoo.example_data(name))):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(data.X_train, zoo.example_data(name, seed=1).X_train)


def test_sequences_standardise_over_steps_and_carry_time():
    data = zoo.sequences(n=300)
    np.testing.assert_allclose(data.X_train.mean((0, 1)), 0, atol=1e-5)
    np.testing.assert_allclose(data.X_train.std((0, 1)), 1, atol=1e-4)
    stamps = data.X_test[:, :, 2]
    assert (stamps == stamps[0]).all() and (np.diff(stamps[0]) > 0).all()


@pytest.mark.parametrize("name", zoo.EXAMPLES)
def test_trains_and_caches(name, tmp_path, monkeypatch):
    model, data = zoo.load_example(name)
    assert not model.training
    assert GOOD_ENOUGH[name](zoo.score(model, data)), zoo.score(model, data)
    assert [p.name for p in (tmp_path / "models").iterdir()] == [f"example-{name}-s0.pt"]  # no temp left

    def no_training(*args, **kwargs):
        raise AssertionError("a cached example was trained again")

    monkeypatch.setattr(zoo, "train_example", no_training)
    rng = torch.get_rng_state()
    cached, cached_data = zoo.load_example(name)
    assert torch.equal(rng, torch.get_rng_state())
    assert not cached.training
    X = torch.as_tensor(data.X_test)
    with torch.no_grad():
        assert torch.equal(model(X), cached(X))
    assert zoo.score(cached, cached_data) == zoo.score(model, data)


def test_training_is_deterministic_and_keeps_the_global_rng():
    rng = torch.get_rng_state()
    a, _ = zoo.train_example("residual_mlp", epochs=2)
    b, _ = zoo.train_example("residual_mlp", epochs=2)
    assert torch.equal(rng, torch.get_rng_state())
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


@pytest.mark.slow  # each example already trains once in the default run; this checks another seed
@pytest.mark.parametrize("name", zoo.EXAMPLES)
def test_other_seeds_train_as_well(name):
    model, data = zoo.train_example(name, seed=1)
    assert GOOD_ENOUGH[name](zoo.score(model, data, "test"))
    assert GOOD_ENOUGH[name](zoo.score(model, data, "val"))


def test_digits_without_scikit_learn_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"\.\[bench\]"):
        zoo.digits()


def test_bad_arguments():
    with pytest.raises(InvalidArgumentError, match="available"):
        zoo.example_data("resnet")
    with pytest.raises(InvalidArgumentError, match="epochs"):
        zoo.train_example("residual_mlp", epochs=0)
    with pytest.raises(InvalidArgumentError, match="split"):
        zoo.score(zoo.ResidualMLP(5, 5), zoo.example_data("residual_mlp"), "dev")


@pytest.mark.parametrize("name, modules", [
    ("digits_cnn", ["conv1", "bn1", "act1", "conv2", "bn2", "act2", "pool", "flatten", "fc1", "act3", "fc2"]),
    ("residual_mlp", ["inp", "blocks.0.fc1", "blocks.0.act", "blocks.0.fc2",
                      "blocks.1.fc1", "blocks.1.act", "blocks.1.fc2", "head"]),
])
def test_fx_traces_cnn_and_residual_mlp(name, modules):
    model, x = _model(name)
    traced = torch.fx.symbolic_trace(model)
    assert [n.target for n in traced.graph.nodes if n.op == "call_module"] == modules
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))


class _OpenEncoderLayers(torch.fx.Tracer):
    """Traces into nn.TransformerEncoderLayer; its MultiheadAttention stays a leaf."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return not isinstance(m, nn.TransformerEncoderLayer) and super().is_leaf_module(m, qualname)


def test_fx_traces_into_the_transformer_layers_without_the_fast_path():
    model, x = _model("transformer")
    default = torch.fx.symbolic_trace(model)
    opaque = ["embed", "encoder.0", "encoder.1", "head"]  # every torch.nn module is a leaf by default
    assert [n.target for n in default.graph.nodes if n.op == "call_module"] == opaque
    with pytest.raises(torch.fx.proxy.TraceError):  # the fast-path checks branch on the input
        _OpenEncoderLayers().trace(model)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        traced = torch.fx.GraphModule(model, _OpenEncoderLayers().trace(model))
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    called = [n.target for n in traced.graph.nodes if n.op == "call_module"]
    assert {"encoder.0.linear1", "encoder.0.linear2", "encoder.1.linear1", "encoder.1.linear2"} <= set(called)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x))


@pytest.mark.parametrize("name", zoo.EXAMPLES)
def test_torch_export(name):
    model, x = _model(name)
    exported = torch.export.export(model, (x,)).module()
    ops = {n.target for n in exported.graph.nodes if n.op == "call_function"}
    assert torch.ops.aten.linear.default in ops
    with torch.no_grad():
        torch.testing.assert_close(exported(x), model(x))
