"""Backbone, configuration and weight I/O."""

from plm.model.config import SIZES, ModelConfig, config_for
from plm.model.transformer import Transformer

__all__ = ["SIZES", "ModelConfig", "Transformer", "config_for"]
