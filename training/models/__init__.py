"""Model registry and architectures (pure modules, no I/O). See ``registry.py`` for the names."""

from training.models.registry import ModelInfo, UnknownModelError, build_model, list_models, model_info

__all__ = ["ModelInfo", "UnknownModelError", "build_model", "list_models", "model_info"]
