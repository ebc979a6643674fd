"""Downstream evaluation: task YAMLs, data readers, probe / LoRA / full fine-tuning heads, contact
prediction, zero-shot variant effects and the ``plm evaluate`` runner."""
