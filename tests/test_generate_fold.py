"""ESMFold pLDDT through the same loading code as real weights, with a tiny random EsmForProteinFolding."""

import json
from pathlib import Path

import pytest
import torch

from plm.generate.fold import PlddtScorer, check_esmfold_dir, load_esmfold, mean_plddt
from tests.helpers.esmfold import build_tiny_esmfold

SEQS = ["MKTAYIAKQRQISF", "MKV", "GHPLWEDNCYVTMAGSRKFIQ", "MKV"]


@pytest.fixture(scope="module")
def esmfold_dir(tmp_path_factory) -> Path:
    return build_tiny_esmfold(tmp_path_factory.mktemp("esmfold") / "esmfold")


def test_plddt_matches_single_sequence_reference(esmfold_dir, tmp_path):
    scorer = PlddtScorer(esmfold_dir, token_budget=40, cache=tmp_path / "cache.json")
    assert next(scorer.model.esm.parameters()).dtype == torch.float32  # fp16_esm in the config is undone
    got = scorer(SEQS, progress=False)
    assert got[1] == got[3] and scorer.folded == 3  # duplicates folded once
    model = load_esmfold(esmfold_dir)
    for seq, value in zip(SEQS, got):
        out = model.infer([seq])
        mask = out.atom37_atom_exists
        ref = float((out.plddt * mask).sum() / mask.sum() * 100)
        assert value == pytest.approx(ref, abs=1e-3)
        assert 0 < value < 100
    assert len({round(v, 3) for v in got}) == 3


def test_cache_by_sequence_hash(esmfold_dir, tmp_path):
    cache = tmp_path / "cache.json"
    first = PlddtScorer(esmfold_dir, cache=cache)(SEQS[:2], progress=False)
    stored = json.loads(cache.read_text())
    (key,) = stored
    assert len(stored[key]) == 2
    again = PlddtScorer(esmfold_dir, cache=cache)
    assert again(SEQS[:3], progress=False)[:2] == first
    assert again.folded == 1  # only the new sequence


def test_chunked_and_bf16_paths(esmfold_dir):
    plain = PlddtScorer(esmfold_dir)(SEQS[:3], progress=False)
    chunked = PlddtScorer(esmfold_dir, chunk_threshold=5, chunk_size=4)(SEQS[:3], progress=False)
    assert chunked == pytest.approx(plain, abs=1e-3)
    bf16 = PlddtScorer(esmfold_dir, dtype="bf16")
    assert next(bf16.model.esm.parameters()).dtype == torch.bfloat16
    assert next(bf16.model.trunk.parameters()).dtype == torch.float32
    assert bf16(SEQS[:3], progress=False) == pytest.approx(plain, abs=2.0)
    with pytest.raises(ValueError, match="fp16"):
        load_esmfold(esmfold_dir, dtype="fp16")


def test_token_budget_batches():
    scorer = PlddtScorer.__new__(PlddtScorer)
    scorer.token_budget = 10
    assert scorer._batches(["AAAA", "AA", "AAA", "AAAAAAAAAAAA"]) == [
        ["AA", "AAA"],
        ["AAAA"],
        ["AAAAAAAAAAAA"],
    ]


def test_clear_errors_for_missing_or_incomplete_dirs(esmfold_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory.*esmfold_v1"):
        check_esmfold_dir(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json is missing; no weights"):
        check_esmfold_dir(empty)
    notfold = tmp_path / "notfold"
    notfold.mkdir()
    (notfold / "config.json").write_text(json.dumps({"model_type": "esm"}))
    (notfold / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="not an ESMFold config"):
        check_esmfold_dir(notfold)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((esmfold_dir / "config.json").read_text())
    from safetensors.torch import load_file, save_file

    state = load_file(esmfold_dir / "model.safetensors")
    save_file({k: v for k, v in state.items() if not k.startswith("trunk.")}, partial / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="weights lack .* tensors.*trunk"):
        load_esmfold(partial)


def test_mean_plddt_uses_atom_mask():
    class Out:
        plddt = torch.tensor([[[0.5] * 37, [1.0] * 37]])
        atom37_atom_exists = torch.tensor([[[1.0] * 4 + [0.0] * 33, [0.0] * 37]])

    assert mean_plddt(Out()).tolist() == [50.0]
