"""Every multi-process path a GPU cluster takes, run here on CPU with 2 processes and gloo (issue #21).

The reference is one process training the ``tiny`` causal LM (fp32, deterministic objective) on 4 rows
per step; the distributed runs take 2 rows on each of 2 ranks, which is the same global batch (the stream
plans ``rows × world`` rows from one cursor). Every run records, per rank and micro-batch, the logged loss
(the mean over the global batch, the same number on every rank) and a digest of each row
(tests/helpers/callbacks.py ``StreamRecorder``); the global token stream is rank 0's rows then rank 1's.

Validation is deliberately uneven: 5 packed rows per held-out set over 2 ranks (3 and 2 rows, so 2 and 1
batches of 2) and an external set of a single row (rank 1 gets none) — it must finish, with the metrics of
one process.

The subprocess runs take 20–60 s each on 2 cores, so they are ``slow`` (CI runs them); the data-side logic
they rely on (filler batches, the resume fingerprint) is also checked in-process in the fast suite.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
from pathlib import Path

import pytest
import torch
from lightning.pytorch.utilities.data import has_iterable_dataset

import plm
from plm.data.datamodule import ProteinDataModule
from plm.tokenizer import PAD
from tests.helpers.runs import REPO, fit_cmd, run_env

FSDP2 = json.dumps({"class_path": "plm.strategies.FSDP2"})
SEQUENCE = "MGNRLIRSYLPNTVMSIEDKQNKYNETIEDSKICNKVYIKQSGKIDKQELTRIKKLGFFY"
STEPS = (0, 1, 2, 3, 4)
AFTER_RESUME = (3, 4)  # 0-based steps after the step-3 checkpoint
LOSS_TOL = 1e-5


class Runs:
    """Each named configuration runs once per module; later tests read its records."""

    def __init__(self, root: Path) -> None:
        self.root, self.out, self.done = root, root / "records", {}
        self.out.mkdir()
        self.one_fasta = root / "one.fasta"
        self.one_fasta.write_text(f">one\n{SEQUENCE}\n")

    def fit(self, name: str, *extra: str, world: int = 1, check: bool = True) -> subprocess.CompletedProcess:
        rows = str(4 // world)
        cmd = fit_cmd(
            self.root,
            name,
            "--model.class_path",
            "plm.lit.CausalLM",
            "--trainer.max_steps",
            "5",
            "--trainer.val_check_interval",
            "5",
            "--data.rows_per_batch",
            rows,
            "--data.val_rows",
            "5",
            "--data.eval_sets",
            json.dumps({"one": str(self.one_fasta)}),
            "--checkpoint_every",
            "3",
            "--keep_checkpoints",
            "-1",
            "--trainer.devices",
            str(world),
            "--trainer.callbacks+=tests.helpers.callbacks.StreamRecorder",
            *extra,
        )
        env = run_env(PLM_TEST_OUT=str(self.out), PLM_TEST_RUN=name)
        res = subprocess.run(cmd, check=False, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
        if check:
            assert res.returncode == 0, res.stderr[-4000:]
        return res

    def get(self, name: str) -> dict:
        """The records of one of the configurations below, running it first if needed."""
        if name not in self.done:
            spec = CONFIGS[name]
            args = [a.replace("{root}", str(self.root)) for a in spec["args"]]
            self.fit(name, *args, world=spec["world"])
            ranks = [
                json.loads((self.out / f"{name}-rank{r}.json").read_text()) for r in range(spec["world"])
            ]
            self.done[name] = {
                "ranks": ranks,
                "dir": self.root / name,
                "logits": torch.load(self.out / f"{name}-logits.pt"),
            }
        return self.done[name]


CONFIGS = {
    "single": {"world": 1, "args": []},
    "ddp": {"world": 2, "args": ["--trainer.strategy", "ddp"]},
    "fsdp": {"world": 2, "args": ["--trainer.strategy", FSDP2]},
    # the model built on the meta device, each rank materialising and sharding it block by block
    "fsdp_meta": {"world": 2, "args": ["--trainer.strategy", FSDP2, "--model.init_args.meta_init", "true"]},
    # the sharded step-3 checkpoint of "fsdp", resumed by 2 ranks
    "fsdp_resumed": {
        "world": 2,
        "args": ["--trainer.strategy", FSDP2, "--ckpt_path", "{root}/fsdp/ckpt/step00000003.ckpt"],
    },
    # world size 2 → 1: the same sharded checkpoint resharded onto one process (4 rows instead of 2 × 2)
    "fsdp_to_one": {
        "world": 1,
        "args": ["--trainer.strategy", FSDP2, "--ckpt_path", "{root}/fsdp/ckpt/step00000003.ckpt"],
    },
    # world size 1 → 2: the one-process run's step-3 checkpoint continued by 2 DDP ranks
    "single_to_ddp": {
        "world": 2,
        "args": ["--trainer.strategy", "ddp", "--ckpt_path", "{root}/single/ckpt/step00000003.ckpt"],
    },
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    return Runs(tmp_path_factory.mktemp("multiprocess"))


def stream(record: dict, steps=STEPS) -> dict[int, list[str]]:
    """Step → the global batch's row digests (rank 0's rows, then rank 1's)."""
    return {
        s: [row for rank in record["ranks"] for b in rank["batches"] if b["step"] == s for row in b["rows"]]
        for s in steps
    }


def global_loss(record: dict, steps=STEPS) -> dict[int, float]:
    """Step → the logged loss: the mean over the global batch, the same number on every rank."""
    per_rank = [{b["step"]: b["loss"] for b in rank["batches"]} for rank in record["ranks"]]
    assert all(r == per_rank[0] for r in per_rank)
    return {s: per_rank[0][s] for s in steps}


def val_metrics(run_dir: Path) -> dict[str, float]:
    with open(run_dir / "csv" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    return {k: float(v) for r in rows for k, v in r.items() if k.startswith("val/") and v}


# ---- distributed = one process ----------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_train_like_one_process_on_the_same_global_batch(runs, strategy):
    single, dist = runs.get("single"), runs.get(strategy)
    assert stream(dist) == stream(single)  # the same rows, in the same order, every step
    ref, got = global_loss(single), global_loss(dist)
    diffs = {s: abs(got[s] - ref[s]) for s in STEPS}
    print(f"{strategy}: |loss - one process| per step {diffs}")
    assert max(diffs.values()) <= LOSS_TOL, diffs
    assert ref[4] < ref[0]  # it trained


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_uneven_validation_rows_finish_with_one_process_metrics(runs, strategy):
    """5 rows per held-out set on 2 ranks (3 and 2), and a set of one row (rank 1: none)."""
    ref, got = val_metrics(runs.get("single")["dir"]), val_metrics(runs.get(strategy)["dir"])
    assert {"val/loss", "val/one/loss", "val/uniprot/loss", "val/metagenomic/loss"} <= set(ref)
    assert set(got) == set(ref)
    for key in ref:
        assert got[key] == pytest.approx(ref[key], rel=1e-6, abs=1e-6), key


@pytest.mark.slow
def test_meta_device_init_on_two_ranks_trains_like_a_whole_build(runs):
    """meta_init (what the recipe sets from 1b): the same initial weights, so the same run."""
    eager, meta = runs.get("fsdp"), runs.get("fsdp_meta")
    assert stream(meta) == stream(eager)
    assert global_loss(meta) == global_loss(eager)
    assert torch.equal(meta["logits"]["logits"], eager["logits"]["logits"])


# ---- sharded checkpoints ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sharded_checkpoint_resumes_exactly_on_two_ranks(runs):
    ckpt = runs.get("fsdp")["dir"] / "ckpt" / "step00000003.ckpt"
    assert ckpt.is_dir() and {"__0_0.distcp", "__1_0.distcp", "meta.pt", ".metadata"} <= {
        p.name for p in ckpt.iterdir()
    }
    full, resumed = runs.get("fsdp"), runs.get("fsdp_resumed")
    for rank in (0, 1):
        a = [b for b in full["ranks"][rank]["batches"] if b["step"] in AFTER_RESUME]
        b = resumed["ranks"][rank]["batches"]
        assert [x["step"] for x in b] == list(AFTER_RESUME)
        assert [(x["loss"], x["rows"]) for x in b] == [(x["loss"], x["rows"]) for x in a]  # exact
    assert torch.equal(resumed["logits"]["logits"], full["logits"]["logits"])


@pytest.mark.slow
def test_sharded_run_exports_one_final_that_loads_on_one_process(runs):
    fsdp = runs.get("fsdp")
    model = plm.load(str(fsdp["dir"] / "final"))
    with torch.no_grad():
        logits = model(fsdp["logits"]["tokens"])
    assert torch.equal(logits, fsdp["logits"]["logits"])  # what the sharded model computed at the end


@pytest.mark.slow
def test_ckpt_path_last_finds_the_newest_sharded_checkpoint(runs):
    from plm.reliability import resolve_resume_path

    ckpt_dir = runs.get("fsdp")["dir"] / "ckpt"
    assert Path(resolve_resume_path(ckpt_dir)).name in ("last.ckpt", "best.ckpt")
    (ckpt_dir / "last.ckpt" / "meta.pt").unlink()  # an incomplete directory is skipped, not resumed
    assert Path(resolve_resume_path(ckpt_dir)).name in ("best.ckpt", "step00000003.ckpt")


# ---- resume on another world size ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name,source", [("fsdp_to_one", "fsdp"), ("single_to_ddp", "single")])
def test_resume_on_another_world_size_continues_the_global_stream(runs, name, source):
    """2 → 1 (a sharded checkpoint resharded) and 1 → 2 (DDP): the same global rows after the resume, and
    the losses of the run that was not interrupted."""
    before, after = runs.get(source), runs.get(name)
    assert stream(after, AFTER_RESUME) == stream(before, AFTER_RESUME)
    ref, got = global_loss(before, AFTER_RESUME), global_loss(after, AFTER_RESUME)
    assert max(abs(got[s] - ref[s]) for s in AFTER_RESUME) <= LOSS_TOL, (ref, got)


@pytest.mark.slow
def test_resume_on_other_data_is_refused(runs):
    runs.get("single")
    ckpt = runs.root / "single" / "ckpt" / "step00000003.ckpt"
    res = runs.fit("other_seed", "--ckpt_path", str(ckpt), "--data.seed", "1", check=False)
    assert res.returncode != 0
    assert "resume refused" in res.stderr and "seed: checkpoint 0, now 1" in res.stderr


# ---- the data side, in-process (fast) -----------------------------------------------------------------------
class _Trainer:
    def __init__(self, rank: int, world: int) -> None:
        self.global_rank, self.world_size = rank, world


def _datamodule(uniprot_fasta, sources: dict | None = None, **kw) -> ProteinDataModule:
    dm = ProteinDataModule(
        sources=sources or {"uniprot": str(uniprot_fasta)}, **{"row_len": 128, "val_fraction": 0.1, **kw}
    )
    dm.setup()
    return dm


def _val_batches(dm: ProteinDataModule, rank: int, world: int) -> list[dict]:
    dm.trainer = _Trainer(rank, world)
    return [b for loader in dm.val_dataloader() for b in loader]


@pytest.mark.parametrize("val_rows,world", [(5, 2), (1, 2), (3, 4)])
def test_every_rank_gets_as_many_validation_batches(uniprot_fasta, val_rows, world):
    """Fillers make up a rank's shortfall (a sharded forward is collective); they hold no real token, and
    the real rows over all ranks are exactly one process's."""
    dm = _datamodule(uniprot_fasta, val_rows=val_rows, rows_per_batch=2)
    per_rank = [_val_batches(dm, r, world) for r in range(world)]
    assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) >= 1
    real = sorted(
        row.tobytes()
        for batches in per_rank
        for b in batches
        if b["n_real"] > 0
        for row in b["tokens"].numpy()
    )
    one = sorted(row.tobytes() for b in _val_batches(dm, 0, 1) for row in b["tokens"].numpy())
    assert real == one and len(one) == val_rows
    # iterable, so Lightning adds no DistributedSampler that would split a rank's share again
    assert all(has_iterable_dataset(loader) for loader in dm.val_dataloader())
    fillers = [b for batches in per_rank for b in batches if b["n_real"] == 0]
    assert fillers and all(int((b["tokens"] != PAD).sum()) == 0 for b in fillers)


def test_resume_fingerprint_refuses_other_data(uniprot_fasta, metagenomic_fasta):
    """Sources, weights, seed and row length decide which samples follow the cursor; rows per device may
    change on resume (a different world size), those may not."""
    two = {"uniprot": str(uniprot_fasta), "metagenomic": str(metagenomic_fasta)}
    state = _datamodule(uniprot_fasta, two).state_dict()
    assert state["fingerprint"]["seed"] == 0 and state["fingerprint"]["row_len"] == 128
    _datamodule(uniprot_fasta, two, rows_per_batch=3).load_state_dict(state)
    cases = [
        ({"seed": 1}, "seed: checkpoint 0, now 1"),
        ({"row_len": 64}, "row_len: checkpoint 128, now 64"),
        ({"weights": {"uniprot": 1.0, "metagenomic": 3.0}}, "weights: checkpoint"),
        ({"sources": {"uniprot": str(uniprot_fasta)}}, "sources: checkpoint"),
    ]
    for kw, message in cases:
        with pytest.raises(ValueError, match=f"resume refused.*{re.escape(message)}"):
            _datamodule(uniprot_fasta, **{"sources": two, **kw}).load_state_dict(state)
    late = ProteinDataModule(sources=two, row_len=128, val_fraction=0.1, seed=1)
    late.load_state_dict(state)  # restored before setup: checked once the stream exists
    with pytest.raises(ValueError, match="resume refused"):
        late.setup()
    old = {k: v for k, v in state.items() if k != "fingerprint"}  # checkpoints from before the check
    _datamodule(uniprot_fasta, two, seed=1).load_state_dict(old)
