"""Model families, one per file, all reachable through the registry."""
from ann2snn.models._registry import (create_model, is_model, list_models, model_kind, register_family,
                                      register_model, unknown_model_message)
from ann2snn.models import transformer  # noqa: F401  (registers its models)
from ann2snn.models import sdt, spikformer  # noqa: F401  (directly trained SNNs)
from ann2snn.models import cnn  # noqa: F401  (QCFS's CIFAR VGG-16, ResNet-18, ResNet-20)
from ann2snn.models import vit  # noqa: F401  (a pre-norm ViT)
from ann2snn.models import gpt  # noqa: F401  (a causal decoder: the language models)
from ann2snn.models import hf  # noqa: F401  (the hf:NAME family: transformers causal LMs, an optional extra)
from ann2snn.models import timm_models  # noqa: F401  (the timm:NAME family)
from ann2snn.models import torchvision  # noqa: F401  (the torchvision:NAME family)

__all__ = ["create_model", "is_model", "list_models", "model_kind", "register_family", "register_model",
           "unknown_model_message"]
