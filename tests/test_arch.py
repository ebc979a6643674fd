"""``model.arch`` is typed (issue #22, "Typed hand-offs"): a misspelt key or a wrong value is refused when
the config is parsed, while the flags, YAML and the value the model receives (a plain dict) stay as they were."""

import dataclasses
import typing

import pytest
from lightning.pytorch.cli import LightningArgumentParser

from plm.lit import CausalLM, MaskedLM
from plm.lit.arch import ArchOverrides, model_config
from plm.lit.language_model import LanguageModel
from plm.model.config import ModelConfig, config_for


def _parser() -> LightningArgumentParser:
    parser = LightningArgumentParser(exit_on_error=False)
    parser.add_lightning_class_args(LanguageModel, "model", subclass_mode=True)
    return parser


def test_arch_keys_are_modelconfig_fields():
    fields = {f.name for f in dataclasses.fields(ModelConfig) if f.init}
    assert set(typing.get_type_hints(ArchOverrides)) == fields and ArchOverrides.__total__ is False


def test_the_flags_parse_to_the_same_plain_dict():
    cfg = _parser().parse_args(
        [
            "--model",
            "MaskedLM",
            "--model.init_args.size",
            "8m",
            "--model.init_args.arch",
            "{n_layer: 3, token_dropout: true}",
        ]
    )
    assert cfg.model.init_args.size == "8m"
    assert cfg.model.init_args.arch == {"n_layer": 3, "token_dropout": True}
    assert type(cfg.model.init_args.arch) is dict
    assert _parser().parse_args(["--model", "CausalLM"]).model.init_args.arch is None


def test_the_yaml_form_parses(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "model:\n  class_path: plm.lit.CausalLM\n  init_args:\n    size: tiny\n"
        "    arch: {n_layer: 3, rotary_dim: 8}\n"
    )
    parser = _parser()
    parser.add_argument("--config", action="config")
    assert parser.parse_args(["--config", str(tmp_path / "c.yaml")]).model.init_args.arch == {
        "n_layer": 3,
        "rotary_dim": 8,
    }


@pytest.mark.parametrize("arch,said", [("{n_layr: 3}", "n_layr"), ("{n_layer: three}", "three")])
def test_a_typo_is_refused_at_parse_time(arch, said):
    with pytest.raises(Exception, match=said):
        _parser().parse_args(["--model", "MaskedLM", "--model.init_args.arch", arch])


def test_the_built_config_is_the_size_with_the_overrides():
    assert model_config("tiny", {"n_layer": 3}) == ModelConfig(n_layer=3, n_embd=64, n_head=4, name="tiny")
    assert model_config("8m", {"flavour": "progen2"}) == config_for("8m", flavour="progen2")
    assert model_config("35m") == config_for("35m")
    assert CausalLM(size="tiny", arch={"n_layer": 3}).config.n_layer == 3
    with pytest.raises(ValueError, match="model.arch: unknown model config keys"):
        MaskedLM(size="tiny", arch={"n_layr": 3})  # Python callers are checked too
    with pytest.raises(ValueError, match="unknown size"):
        MaskedLM(size="9m")
