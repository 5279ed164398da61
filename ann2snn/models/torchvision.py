"""torchvision's classification models as the family ``torchvision:NAME`` (``--model torchvision:resnet18``).

``torchvision.models.get_model(NAME, weights=None, num_classes=…)`` builds the network with random
weights (no hub downloads: pretrained weights come from a local file, config key ``pretrained``),
and :func:`adapt` fits it to the data set:

- input channels: the first convolution is rebuilt for ``in_channels`` (1 for Fashion-MNIST);
- small images (< 64 px, the CIFAR convention): ResNets get a 3×3 stride-1 stem without the
  max-pool (as in QCFS's CIFAR ResNets); DenseNets and MobileNets a stride-1 first convolution
  (DenseNet without its stem pool); VGGs keep only the max-pools the image size allows and end in
  a global average pool and one Linear(512, classes), the CIFAR VGG head.  Other families keep
  their ImageNet stem.

The ReLU network is then quantized like any model (:func:`ann2snn.quant.quantize`).  Models
built from other activations (GELU ViTs, Hardswish MobileNetV3, SiLU EfficientNets) are refused
there with a message saying so.
"""
from __future__ import annotations

import math

from torch import nn

from ann2snn.models._registry import register_family


def _tv():
    from ann2snn._compat import import_torchvision

    return import_torchvision()


def available() -> list[str]:
    tv = _tv()
    return sorted(tv.models.list_models(module=tv.models))


def _first_conv(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    return next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def _conv_like(conv: nn.Conv2d, in_channels: int, kernel=None, stride=None, padding=None) -> nn.Conv2d:
    return nn.Conv2d(in_channels, conv.out_channels, kernel or conv.kernel_size, stride or conv.stride,
                     conv.padding if padding is None else padding, conv.dilation, conv.groups,
                     conv.bias is not None)


def adapt(model: nn.Module, name: str, in_channels: int, img_size: int) -> nn.Module:
    """Fit a torchvision classifier to ``in_channels`` and small images (see the module docstring)."""
    first = _first_conv(model)
    small = img_size < 64
    if name.startswith(("resnet", "resnext", "wide_resnet")) and small:
        model.conv1 = _conv_like(model.conv1, in_channels, 3, 1, 1)
        model.maxpool = nn.Identity()
    elif name.startswith("vgg") and small:
        pools = [n for n, m in model.features.named_children() if isinstance(m, nn.MaxPool2d)]
        keep = max(int(math.floor(math.log2(max(img_size, 1)))), 0)
        for n in pools[keep:]:
            setattr(model.features, n, nn.Identity())
        model.avgpool = nn.AdaptiveAvgPool2d(1)
        model.classifier = nn.Linear(512, model.classifier[-1].out_features)
        if first is not None and first[1].in_channels != in_channels:
            _set(model, first[0], _conv_like(first[1], in_channels))
    elif first is not None:
        n, conv = first
        stride = 1 if small and name.startswith(("densenet", "mobilenet", "mnasnet", "shufflenet")) else None
        if conv.in_channels != in_channels or stride:
            _set(model, n, _conv_like(conv, in_channels, stride=stride))
        if small and name.startswith("densenet"):
            model.features.pool0 = nn.Identity()
    return model


def torchvision_model(name: str, in_channels: int = 3, img_size: int = 224, num_classes: int = 1000,
                      **ignored) -> nn.Module:
    """``torchvision.models.get_model(name)`` with random weights, adapted by :func:`adapt`.
    The transformer's keys (dim, depth, …) do not apply and are ignored."""
    tv = _tv()
    kw = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
    model = tv.models.get_model(name, weights=None, num_classes=num_classes, **kw)
    return adapt(model, name, in_channels, img_size)


register_family("torchvision", torchvision_model, available)
