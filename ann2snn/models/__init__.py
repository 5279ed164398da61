"""Model families, one per file, all reachable through the registry."""
from ann2snn.models._registry import create_model, list_models, model_kind, register_model
from ann2snn.models import transformer  # noqa: F401  (registers its models)
from ann2snn.models import sdt, spikformer  # noqa: F401  (directly trained SNNs)

__all__ = ["create_model", "list_models", "model_kind", "register_model"]
