"""Synthetic networks for the engine benchmarks (shared by the scripts in this folder)."""
from __future__ import annotations

import numpy as np

from afde_nb.core.network import Layer, Network


def random_mlp(width: int, depth: int, seed: int = 0, clusters: int | None = None, noise: float = 0.01,
               activation: str = "tanh", dtype=np.float64) -> Network:
    """``depth`` Linear layers of ``width`` x ``width`` (Glorot-scaled normal). With ``clusters``,
    every hidden layer's rows are drawn around that many centres (trained-network-like redundancy)."""
    rng = np.random.default_rng(seed)
    layers = []
    for k in range(depth):
        scale = 1.0 / np.sqrt(width)
        if clusters and k < depth - 1:
            centres = rng.standard_normal((clusters, width + 1), dtype=np.float32) * scale
            M = centres[rng.integers(0, clusters, width)]
            M += rng.standard_normal(M.shape, dtype=np.float32) * (noise * scale)
        else:
            M = rng.standard_normal((width, width + 1), dtype=np.float32) * scale
        M = M.astype(dtype, copy=False)
        layers.append(Layer(np.ascontiguousarray(M[:, :-1]), np.ascontiguousarray(M[:, -1]),
                            activation if k < depth - 1 else "identity"))
    return Network(layers, dtype="float32")


# ---------------------------------------------------------------------------------------------
# torchvision's ResNet-18, from torch.nn modules (torchvision's wheel does not load against the
# CPU torch this project pins). Same modules, names and forward as torchvision.models.resnet18,
# so its state_dict keys and parameter count (11,689,512) are torchvision's.

import torch  # noqa: E402
from torch import nn  # noqa: E402


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision.models.ResNet with BasicBlocks (its default initialisation included)."""

    def __init__(self, layers=(2, 2, 2, 2), num_classes: int = 1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 1000, seed: int = 0) -> ResNet:
    """torchvision's ``resnet18()`` (random init, seeded), in eval mode."""
    torch.manual_seed(seed)
    return ResNet((2, 2, 2, 2), num_classes).eval()
