"""torch.fx discovery of lumpable groups: what counts as one, what is left alone and why."""
import torch
from torch import nn

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
    assert d.groups == []
    left = dict(d.skipped)
    assert "2 operations" in left["a"]
    assert "grouped" in left["dw"]
    assert left["conv"] == "its outputs feed dw, a grouped, depthwise or string-padded convolution"
    assert "add" in left["b"]
    assert "lumpable group(s)" in d.report() and "left alone a:" in d.report()


def test_model_is_not_modified_and_order_is_model_order():
    m = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 1))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    d = find_groups(m)
    assert [g.producer.name for g in d.groups] == ["0", "2"]
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
