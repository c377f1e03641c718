"""torch.fx discovery of lumpable groups: what counts as one, what is left alone and why."""
import pytest
import torch
from torch import nn

import afde_nb
from afde_nb.models.groups import find_groups

F = nn.functional


class Functional(nn.Module):
    """Activations as functions and methods, dropout, BatchNorm1d after a Linear, a chain of three."""

    def __init__(self):
        super().__init__()
        self.a, self.bn = nn.Linear(4, 6), nn.BatchNorm1d(6)
        self.b, self.c, self.d = nn.Linear(6, 5), nn.Linear(5, 5), nn.Linear(5, 2)
        self.drop = nn.Dropout(0.2)

    def forward(self, x):
        h = F.gelu(self.bn(self.a(x)), approximate="tanh")
        h = self.drop(F.leaky_relu(self.b(h), 0.2))
        return self.d(self.c(h).tanh())


def test_functional_forms_and_chain():
    d = find_groups(Functional().eval())
    assert len(d.chains) == 1
    got = [(g.producer.name, g.norm.name if g.norm else None, g.activation, g.negative_slope, g.act_params,
            g.consumer.name) for g in d.chains[0]]
    assert got == [("a", "bn", "gelu", 0.01, (("approximate", "tanh"),), "b"),
                   ("b", None, "leaky_relu", 0.2, (), "c"),
                   ("c", None, "tanh", 0.01, (), "d")]
    assert dict(d.skipped) == {"d": "its outputs feed the model's output before any activation, not a Linear/convolution"}


def test_training_batchnorm_and_dropout_are_not_folded():
    m = Functional().train()
    d = find_groups(m)
    # a BatchNorm in training mode is not an eval-time affine map; a training dropout is not a no-op
    assert [g.producer.name for g in d.groups] == ["c"]
    assert "a" in dict(d.skipped) and "b" in dict(d.skipped)


class Branches(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(3, 4), nn.Linear(4, 2), nn.Linear(4, 2)
        self.conv, self.lin = nn.Conv1d(1, 3, 2), nn.Linear(3 * 3, 2)
        self.dw = nn.Conv1d(3, 3, 1, groups=3)

    def forward(self, x):
        h = torch.relu(self.a(x))
        y = self.b(h) + self.c(h)  # two consumers
        z = self.dw(torch.relu(self.conv(x.unsqueeze(1))))  # a depthwise consumer
        return y + self.lin(z.flatten(1))


def test_left_alone_with_reasons():
    d = find_groups(Branches())
    # a's units fan out to b and c: one group with both consumers (tests/test_cat.py)
    assert [(g.producer.name, [c.name for c in g.consumers]) for g in d.groups] == [("a", ["b", "c"])]
    left = dict(d.skipped)
    assert "a" not in left
    assert "grouped" in left["dw"]
    assert left["conv"] == "its outputs feed dw, a grouped, depthwise or string-padded convolution"
    assert "add" in left["b"]
    assert "lumps a (linear) -> relu -> b, c; passes fan-out to 2 layers" in d.report() and "left alone b:" in d.report()


def test_model_is_not_modified_and_order_is_model_order():
    m = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 1))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    d = find_groups(m)
    assert [g.producer.name for g in d.groups] == ["0", "2"]
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())


# ---- activations: every element-wise activation of torch, recognised by class and checked by value


class Residual(nn.Module):
    def __init__(self, act, d=4, h=16):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(d, h), act, nn.Linear(h, d)

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(x)))


ACTS = [
    (nn.Hardswish(), "hardswish"), (nn.Hardsigmoid(), "hardsigmoid"), (nn.Mish(), "mish"), (nn.SELU(), "selu"),
    (nn.CELU(0.7), "celu"), (nn.LogSigmoid(), "logsigmoid"), (nn.Softsign(), "softsign"),
    (nn.Tanhshrink(), "tanhshrink"), (nn.Hardshrink(0.3), "hardshrink"), (nn.Softshrink(0.3), "softshrink"),
    (nn.Threshold(0.1, -0.2), "threshold"), (nn.ReLU6(), "hardtanh"), (nn.PReLU(init=0.2), "leaky_relu"),
    (nn.RReLU(0.1, 0.3), "leaky_relu"), (nn.ELU(0.5), "elu"), (nn.Softplus(2.0, 10.0), "softplus"),
    (nn.GELU("tanh"), "gelu"), (nn.SiLU(), "silu"), (nn.LeakyReLU(0.1), "leaky_relu"),
    (nn.Hardtanh(-0.5, 2.0), "hardtanh"), (nn.Tanh(), "tanh"), (nn.Sigmoid(), "sigmoid"), (nn.ReLU(), "relu"),
]
NOT_ELEMENTWISE = {"GLU", "MultiheadAttention", "Softmin", "Softmax", "Softmax2d", "LogSoftmax"}


def test_every_elementwise_torch_activation_has_a_reader():
    from afde_nb.models.groups import _ACT_MODULES

    names = set(nn.modules.activation.__all__) - NOT_ELEMENTWISE
    assert names <= {c.__name__ for c in _ACT_MODULES}
    assert {type(a).__name__ for a, _ in ACTS} == names


@pytest.mark.parametrize("act,name", ACTS, ids=[type(a).__name__ for a, _ in ACTS])
def test_activation_modules_recognised_and_exact(act, name):
    torch.manual_seed(0)
    m = Residual(act).eval()
    with torch.no_grad():  # unit 5 := unit 2: a duplicate for every activation
        m.fc1.weight[5], m.fc1.bias[5] = m.fc1.weight[2], m.fc1.bias[2]
    d = find_groups(m)
    assert [g.activation for g in d.groups] == [name]
    c = afde_nb.compress(m, 0.0)
    assert c.layers[0].neurons_after == 15
    x = 3 * torch.randn(128, 4)
    with torch.no_grad():
        assert float((c.model(x) - m(x)).abs().max()) <= 1e-5


@pytest.mark.parametrize("act,merges", [(nn.Softsign(), True), (nn.Tanhshrink(), True), (nn.Hardshrink(0.3), True),
                                        (nn.Softshrink(0.3), True), (nn.Mish(), False), (nn.Hardswish(), False),
                                        (nn.SELU(), False), (nn.Hardsigmoid(), False)])
def test_negation_only_for_odd_activations(act, merges):
    torch.manual_seed(1)
    m = Residual(act).eval()
    with torch.no_grad():
        m.fc1.weight[5], m.fc1.bias[5] = -m.fc1.weight[2], -m.fc1.bias[2]
    c = afde_nb.compress(m, 0.0)
    assert (c.layers[0].neurons_after == 15) is merges
    x = 3 * torch.randn(128, 4)
    with torch.no_grad():
        assert float((c.model(x) - m(x)).abs().max()) <= 1e-5


def test_activations_that_are_not_one_function_are_refused_with_why():
    per_channel = find_groups(Residual(nn.PReLU(16)).eval())
    assert per_channel.groups == [] and "not one element-wise function" in dict(per_channel.skipped)["fc1"]
    training = Residual(nn.RReLU()).train()
    assert "not one element-wise function" in dict(find_groups(training).skipped)["fc1"]
    liar = nn.GELU()
    liar.forward = torch.tanh  # an instance whose values are not its class's
    d = find_groups(Residual(liar).eval())
    assert d.groups == [] and "values are not those of gelu" in dict(d.skipped)["fc1"]


class NewFunctional(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = nn.Linear(3, 6), nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 2)

    def forward(self, x):
        return self.d(F.softsign(self.c(F.mish(self.b(F.hardswish(self.a(x)))))))


def test_new_functional_and_aten_forms():
    m = NewFunctional().eval()
    assert [g.activation for g in find_groups(m).groups] == ["hardswish", "mish", "softsign"]
    gm = torch.export.export(m, (torch.randn(4, 3),)).module()  # ATen ops on parameters
    d = find_groups(gm)
    assert [g.activation for g in d.groups] == ["hardswish", "mish"]
    assert "c" in dict(d.skipped)  # F.softsign has no ATen op of its own: abs, add, div


class Branchy(nn.Module):
    """A forward torch.fx cannot trace (it branches on the input's shape); torch.export can."""

    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(4, 12), nn.Hardswish(), nn.Linear(12, 3)

    def forward(self, x):
        if x.dim() == 3:
            x = x.mean(1)
        return self.fc2(self.act(self.fc1(x)))


def test_export_route_where_fx_fails():
    torch.manual_seed(2)
    m = Branchy().eval()
    with torch.no_grad():
        m.fc1.weight[7], m.fc1.bias[7] = m.fc1.weight[1], m.fc1.bias[1]
    blind = find_groups(m)
    assert blind.groups == [] and "example inputs" in blind.note
    x = torch.randn(32, 4)
    d = find_groups(m, ((x[:2],), {}))
    assert [(g.producer.name, g.producer.module, g.activation, g.consumer.name) for g in d.groups] == \
        [("fc1", "fc1", "hardswish", "fc2")] and "torch.export" in d.report()
    c = afde_nb.compress(m, 0.0, calibration=x)  # exported on two calibration rows
    assert type(c.model) is Branchy and c.model.fc1.out_features == 11 and m.fc1.out_features == 12
    with torch.no_grad():
        assert float((c.model(x) - m(x)).abs().max()) <= 1e-5
