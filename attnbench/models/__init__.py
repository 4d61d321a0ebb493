"""Whole DeiT-style models with a pluggable attention, for model-level parameter and MAC counts."""
from attnbench.models.vit import ARCHS, ViT, ViTConfig, count_params, vit_config

__all__ = ["ARCHS", "ViT", "ViTConfig", "count_params", "vit_config"]
