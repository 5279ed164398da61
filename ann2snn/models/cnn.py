"""The CIFAR CNNs the conversion literature measures: VGG-16, ResNet-18 and ResNet-20.

As in QCFS (Bu et al., "Optimal ANN-SNN Conversion for High-accuracy and Ultra-low-latency
Spiking Neural Networks", ICLR 2022) and the works it compares with, every 3×3 convolution is
followed by BatchNorm and an activation site (one ``nn.ReLU`` module per site, so quantization
needs no graph rewrite), and pooling is max- or average-pooling (config key ``use_maxpool``).

- ``vgg16``: Simonyan & Zisserman's 13 convolutions in five stages (64, 128, 256, 512, 512
  channels), a pool after each stage, then the CIFAR classifier Linear(512, 4096) → ReLU →
  Dropout → Linear(4096, 4096) → ReLU → Dropout → Linear(4096, classes).
- ``resnet18``: He et al.'s BasicBlocks [2, 2, 2, 2] (64..512 channels) with the CIFAR stem (one
  3×3 stride-1 convolution, no stem pool), global average pool, Linear.
- ``resnet20``: He et al.'s CIFAR ResNet-20, three stages of three BasicBlocks (16, 32, 64
  channels), global average pool, Linear.  Shortcuts that change shape are 1×1 conv + BN.

``width`` scales every channel count (1.0 = the papers'), for CPU-sized runs.  Images smaller
than 32 px keep only the pools their size allows (VGG) and end in a global average pool, so the
same models run on 28×28 Fashion-MNIST and 8×8 digits.
"""
from __future__ import annotations

from torch import nn

from ann2snn.models._registry import register_model

VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def _c(channels: int, width: float) -> int:
    return max(int(round(channels * width)), 1)


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class VGG(nn.Module):
    def __init__(self, plan: list, in_channels: int = 3, num_classes: int = 10, img_size: int = 32,
                 use_maxpool: bool = True, width: float = 1.0, dropout: float = 0.5):
        super().__init__()
        layers: list[nn.Module] = []
        c, size = in_channels, img_size
        for v in plan:
            if v == "M":
                if size >= 2:  # a pool only while the feature map can shrink
                    layers.append(nn.MaxPool2d(2, 2) if use_maxpool else nn.AvgPool2d(2, 2))
                    size //= 2
            else:
                layers += conv_bn_relu(c, _c(v, width))
                c = _c(v, width)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        hidden = _c(4096, width)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                        nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                        nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, blocks: list[int], channels: list[int], in_channels: int = 3, num_classes: int = 10,
                 width: float = 1.0):
        super().__init__()
        chans = [_c(c, width) for c in channels]
        self.stem = nn.Sequential(*conv_bn_relu(in_channels, chans[0]))
        stages, c = [], chans[0]
        for i, (n, cout) in enumerate(zip(blocks, chans)):
            stride = 1 if i == 0 else 2
            stage = []
            for j in range(n):
                stage.append(BasicBlock(c, cout, stride if j == 0 else 1))
                c = cout
            stages.append(nn.Sequential(*stage))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.layers(self.stem(x))).flatten(1))


@register_model("vgg16")
def vgg16(in_channels: int = 3, num_classes: int = 10, img_size: int = 32, use_maxpool: bool = True,
          width: float = 1.0, **ignored) -> VGG:
    """QCFS's CIFAR VGG-16 (BN after every conv)."""
    return VGG(VGG16, in_channels, num_classes, img_size, use_maxpool, width)


@register_model("resnet18")
def resnet18(in_channels: int = 3, num_classes: int = 10, width: float = 1.0, **ignored) -> ResNet:
    """ResNet-18 with the CIFAR stem."""
    return ResNet([2, 2, 2, 2], [64, 128, 256, 512], in_channels, num_classes, width)


@register_model("resnet20")
def resnet20(in_channels: int = 3, num_classes: int = 10, width: float = 1.0, **ignored) -> ResNet:
    """He et al.'s CIFAR ResNet-20 (16, 32, 64 channels)."""
    return ResNet([3, 3, 3], [16, 32, 64], in_channels, num_classes, width)
