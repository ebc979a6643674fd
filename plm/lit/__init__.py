"""LightningModules."""

from plm.lit.language_model import CausalLM, LanguageModel, MaskedLM

__all__ = ["CausalLM", "LanguageModel", "MaskedLM"]
