"""OFA's image stem: a 3-stage Bottleneck ResNet (conv1 + maxpool + layer1..layer3, stride 16, 1024 channels).

Parameter names follow torchvision/OFA (`conv1`, `bn1`, `layer{i}.{j}.conv1`, `...downsample.0/1`) so that OFA-Sys
checkpoints load unchanged.
"""
import torch
from torch import nn

from .drop_path import DropPath, linear_rates

RESNET_OUT_CHANNELS = 1024


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (carries the stride) -> 1x1 (x4 channels) with a residual; the residual branch has drop-path."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 drop_path_rate: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(identity + self.drop_path(out))


class ResNet(nn.Module):
    """(B, 3, H, W) normalised images -> (B, 1024, H/16, W/16) features. `depths`: blocks per stage, one of
    `configuration_ofa.RESNET_DEPTHS`."""

    def __init__(self, depths: tuple[int, int, int], drop_path_rate: float = 0.0):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        # Drop-path grows linearly over all blocks of the three stages, as in OFA.
        rates = linear_rates(drop_path_rate, sum(depths))
        self.layer1 = self._make_layer(64, depths[0], 1, rates[: depths[0]])
        self.layer2 = self._make_layer(128, depths[1], 2, rates[depths[0]: depths[0] + depths[1]])
        self.layer3 = self._make_layer(256, depths[2], 2, rates[depths[0] + depths[1]:])

    def _make_layer(self, planes: int, blocks: int, stride: int, rates: list[float]) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample, rates[0])]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes, drop_path_rate=rate) for rate in rates[1:]]
        return nn.Sequential(*layers)

    channels_last = True
    """Run in channels-last layout (oneDNN's preferred one), in training too: on CPU, ~10-15% off a beam-5 generate
    on one thread and ~15% off the demo's training step (2 threads, interleaved); not measured on a GPU. The features
    come out in that layout, the values equal up to float rounding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))
