"""The options an evaluation task runs with are one frozen dataclass (issue #22, typed hand-offs): layered
plm defaults < the YAML's defaults < overrides, each value typed once, a misspelt name an error where it is
written (never a silent fallback), and the `plm evaluate` flags derived from a typed function."""

from __future__ import annotations

import dataclasses

import pytest

from plm.evaluation.options import OVERRIDE, PLM_DEFAULTS, TASK_KEYS, EvalOptions, layered, typed_defaults
from plm.evaluation.tasks import load_task


def test_layers_defaults_yaml_then_overrides_and_says_who_set_each():
    opts, origins = layered(
        {"lr": "3e-3", "max_test": 1000, "epochs": 20},
        "t.yaml",
        600,
        {"epochs": 3, "seed": None, "use_trainer": False},
    )
    assert (opts.lr, opts.max_test, opts.epochs, opts.seed, opts.use_trainer) == (3e-3, 1000, 3, 0, False)
    assert opts.max_len == 598  # the model's max_seq_len - 2 (<cls>, <eos>)
    assert (origins["lr"], origins["epochs"], origins["seed"]) == ("t.yaml", OVERRIDE, PLM_DEFAULTS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.epochs = 1  # type: ignore[misc]


def test_a_misspelt_option_fails_where_it_is_written():
    with pytest.raises(TypeError, match=r"overrides \['epoch'\] name no EvalOptions field"):
        layered({}, "t.yaml", 1024, {"epoch": 3})
    with pytest.raises(ValueError, match=r"unknown defaults \['epoch'\]"):
        typed_defaults({"epoch": 3})
    with pytest.raises(AttributeError):
        EvalOptions().epoch  # type: ignore[attr-defined]  # noqa: B018


def test_yaml_values_are_typed_once_and_wrong_ones_are_named():
    assert typed_defaults({"lr": "1e-3", "max_train": None, "epochs": 5.0}) == {
        "lr": 1e-3,
        "max_train": None,
        "epochs": 5,
    }
    with pytest.raises(ValueError, match=r"epochs: 'ten' is not an int; probe_c: True is not a float"):
        typed_defaults({"epochs": "ten", "probe_c": True})
    with pytest.raises(ValueError, match="epochs: 2.5 is not an int"):
        typed_defaults({"epochs": 2.5})
    assert "use_trainer" not in TASK_KEYS  # the run's, not a task's


def test_a_task_yaml_with_a_wrong_default_fails_at_load(tmp_path):
    yaml = tmp_path / "t.yaml"
    yaml.write_text(
        "kind: zero_shot\nformat: dms_csv\ndata: {table: t.csv, wildtype: wt.fasta}\nwildtype_id: WT\n"
        "defaults: {max_test: lots}\n"
    )
    with pytest.raises(ValueError, match=r"t\.yaml: defaults: max_test: 'lots' is not an int \| None"):
        load_task(yaml)


def test_bundled_tasks_load_with_typed_options():
    spec = load_task("gb1")
    opts = spec.options()
    assert isinstance(opts, EvalOptions) and isinstance(opts.lr, float)


def test_plm_evaluate_is_a_typed_function_over_the_same_flags():
    from plm.evaluation import runner

    assert runner.main.function is runner.evaluate
    parser = runner.build_parser()
    mode = next(a for a in parser._actions if a.dest == "mode")
    assert (mode.default, mode.choices) == ("frozen", ["frozen", "lora", "full"])
    seed = next(a for a in parser._actions if a.dest == "seed")
    assert (seed.default, seed.type) == (None, int)  # None: the task's seed, else EvalOptions.seed
