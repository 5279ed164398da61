"""QCFS's CIFAR CNNs (vgg16, resnet18, resnet20): registered, trainable with the SGD recipe, and
converted exactly: under ``exact`` each settles on its quantized ANN's logits within
1e-4 · max(1, max |logit|) at random weights (random BatchNorm statistics and λ), small inputs."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import ann2snn
from ann2snn.app.cli import main
from ann2snn.app.config import load_config
from ann2snn.models import create_model, list_models
from ann2snn.quant import QCFS
from helpers import randomize_bn, randomize_lambdas

CNNS = ("vgg16", "resnet18", "resnet20")


@pytest.mark.parametrize("name", CNNS)
@pytest.mark.parametrize("use_maxpool", [True, False])
def test_registered_cnns_settle_on_their_quantized_ann(name, use_maxpool):
    assert name in list_models()
    torch.manual_seed(0)
    model = create_model(name, in_channels=3, img_size=16, num_classes=10, width=0.25, use_maxpool=use_maxpool)
    pools = {type(m) for m in model.modules() if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d))}
    if name == "vgg16":
        assert pools == {nn.MaxPool2d if use_maxpool else nn.AvgPool2d}
    q = ann2snn.quantize(model.eval(), 4)
    assert q is model  # one ReLU module per site: quantized in place, the class kept
    randomize_bn(q, torch.Generator().manual_seed(1))
    randomize_lambdas(q, 0.5, 2.0, torch.Generator().manual_seed(2))
    q.eval()
    snn = ann2snn.convert(q, "exact")
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert len(snn.report["fold_bn"]) == bns and not snn.report["gate_batchnorm"]  # BN after every conv folds
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    for t in (1, 4):
        r = ann2snn.verify(q, snn, x, t=t)
        assert r.ok, (name, t, r)


def test_cnn_depths_and_widths_are_the_papers():
    conv = lambda m: [c for c in m.modules() if isinstance(c, nn.Conv2d) and c.kernel_size == (3, 3)]  # noqa: E731
    vgg = create_model("vgg16", img_size=32)
    assert len(conv(vgg)) == 13 and [c.out_channels for c in conv(vgg)][-1] == 512
    assert sum(isinstance(m, nn.MaxPool2d) for m in vgg.modules()) == 5
    r18, r20 = create_model("resnet18"), create_model("resnet20")
    assert len(conv(r18)) == 17 and len(conv(r20)) == 19  # + the Linear: 18 and 20 weight layers
    assert [c.out_channels for c in conv(r20)][0] == 16 and conv(r18)[0].stride == (1, 1)
    assert sum(p.numel() for p in r20.parameters()) == pytest.approx(0.27e6, rel=0.02)  # He et al.: 0.27 M
    q = ann2snn.quantize(create_model("resnet20"), 4)
    assert sum(isinstance(m, QCFS) for m in q.modules()) == 19


@pytest.mark.parametrize("config", ["vgg16_cifar10", "resnet18_cifar10", "resnet20_cifar10", "vgg16_cifar100",
                                    "resnet18_cifar100", "resnet20_cifar100"])
def test_qcfs_recipe_configs(config):
    cfg = load_config(f"configs/{config}.yml")
    cifar100 = config.endswith("100")
    assert (cfg.optimizer, cfg.momentum, cfg.wd, cfg.epochs) == ("sgd", 0.9, 5e-4, 300)
    assert (cfg.lr, cfg.l) == ((0.02, 8) if cifar100 else (0.1, 4))
    assert cfg.autoaugment and cfg.cutout > 0 and cfg.augment


@pytest.mark.slow
def test_sgd_recipe_trains_a_cnn_through_the_cli(tmp_path, capsys):
    rc = main(["train", "-c", "configs/digits.yml", "--model", "resnet20", "--width", "0.5", "--optimizer", "sgd",
               "--lr", "0.05", "--wd", "5e-4", "--epochs", "2", "--train_subset", "256", "--test_subset", "96",
               "--out", str(tmp_path / "r"), "--out_root", str(tmp_path)])
    assert rc == 0, capsys.readouterr().err
    ckpt = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    groups = ckpt["optimizer"]["param_groups"]
    assert groups[0]["momentum"] == 0.9 and groups[0]["weight_decay"] == 5e-4 and "betas" not in groups[0]
    capsys.readouterr()
    assert main(["convert", "--checkpoint", str(tmp_path / "r" / "best_model.pt"), "--t", "4", "--verify"]) == 0
    assert ": OK;" in capsys.readouterr().out


def test_width_is_refused_for_models_without_channels():
    from ann2snn.app.config import ConfigError

    with pytest.raises(ConfigError, match="width applies to the CNNs"):
        load_config(None, {"model": "transformer", "width": 0.5})
