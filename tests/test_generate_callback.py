"""GenerationCallback samples and logs during CLM training (tiny preset, a few Lightning steps)."""

import pytest

from plm.callbacks.generation import GenerationCallback
from plm.data.datamodule import ProteinDataModule
from plm.lit import CausalLM, MaskedLM
from tests.helpers.esmfold import build_tiny_esmfold
from tests.helpers.runs import quiet_trainer


def _fit(model, cb, tmp_path, steps=4):
    dm = ProteinDataModule(row_len=128, rows_per_batch=4, val_rows=2)
    trainer = quiet_trainer(tmp_path, steps, [cb])
    trainer.fit(model, dm)
    return trainer


def test_logs_generation_metrics_every_k_steps(tmp_path):
    cb = GenerationCallback(
        every_n_steps=2, num=4, max_length=24, esmfold=str(build_tiny_esmfold(tmp_path / "f"))
    )
    model = CausalLM(size="tiny", total_steps=4)
    trainer = _fit(model, cb, tmp_path)
    assert [h["step"] for h in cb.history] == [2.0, 4.0]
    for key in [
        "gen/perplexity",
        "gen/pairwise_identity",
        "gen/clusters50_per_seq",
        "gen/repeat_fraction",
        "gen/plddt",
    ]:
        assert key in trainer.callback_metrics
    h = cb.history[-1]
    assert 1 < h["gen/perplexity"] < 100 and 0 <= h["gen/repeat_fraction"] <= 1 and 0 < h["gen/plddt"] < 100
    assert model.model.training  # training mode restored


def test_skipped_for_mlm_and_validates_args(tmp_path):
    cb = GenerationCallback(every_n_steps=1, num=2, max_length=10)
    _fit(MaskedLM(size="tiny", total_steps=2), cb, tmp_path, steps=2)
    assert cb.history == []
    with pytest.raises(ValueError, match="every_n_steps=0"):
        GenerationCallback(every_n_steps=0)


def test_sampling_defaults_are_progen2s_released_example_everywhere():
    from plm.generate.sampling import SamplingConfig

    d = SamplingConfig()
    # salesforce/progen progen2/README.md: sample.py --t 0.8 --p 0.9; sample.py's --max-length default 256
    assert (d.temperature, d.top_p, d.max_length) == (0.8, 0.9, 256)
    cb = GenerationCallback()
    assert (cb.sampling.temperature, cb.sampling.top_p) == (d.temperature, d.top_p)
