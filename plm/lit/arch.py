"""``model.arch``: the typed overrides of a ladder size's :class:`~plm.model.config.ModelConfig`.

``LanguageModel(size=…, arch={…})`` builds its Transformer from the size's shape with ``arch``'s fields
on top. ``arch`` is typed as :data:`ArchOverrides`, a ``TypedDict`` with exactly ModelConfig's fields,
all optional: LightningCLI (jsonargparse) checks every key and value when it parses the config, so
``--model.init_args.arch '{n_layr: 3}'`` or ``arch: {n_layer: three}`` in a YAML is refused before
anything is built, naming the key. The value stays a plain dict, so the flags, the YAML, the saved
``config.yaml``, the checkpoints' hyper-parameters and what a resume compares are unchanged.

ArchOverrides is derived from ModelConfig, never written out twice, so a field added to ModelConfig is
a valid key at once.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, TypedDict

from plm.model.config import ModelConfig, config_for


def _overrides_type() -> type:
    hints = typing.get_type_hints(ModelConfig)
    fields = {f.name: hints[f.name] for f in dataclasses.fields(ModelConfig) if f.init}
    td = TypedDict("ArchOverrides", fields, total=False)  # type: ignore[misc]
    td.__module__ = __name__
    td.__doc__ = "ModelConfig fields overriding a ladder size's preset; every key optional."
    return td


#: ModelConfig's fields, each optional, as a TypedDict (see the module docstring)
ArchOverrides = _overrides_type()


def model_config(size: str, arch: Mapping[str, Any] | None = None, source: str = "model.arch") -> ModelConfig:
    """The ModelConfig of ladder ``size`` (its shape and name) with ``arch``'s fields on top. Unknown keys
    fail naming ``source`` (Python callers bypass the parser's check; this one catches them)."""
    preset = config_for(size)
    shape = {"n_layer": preset.n_layer, "n_embd": preset.n_embd, "n_head": preset.n_head, "name": preset.name}
    return ModelConfig.from_dict({**shape, **dict(arch or {})}, source=source)
