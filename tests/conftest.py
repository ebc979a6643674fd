"""Shared fixtures: real sequences shipped in tests/fixtures, tiny models built with the real code."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from plm.data.fasta import read_fasta
from plm.identity.seqio import SeqRecord, read_train
from plm.model.config import ModelConfig
from plm.model.transformer import Transformer

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def uniprot_fasta() -> Path:
    return FIXTURES / "uniprot_tiny500.fasta.gz"


@pytest.fixture(scope="session")
def metagenomic_fasta() -> Path:
    return FIXTURES / "metagenomic_tiny500.fasta.gz"


@pytest.fixture(scope="session")
def proteins(uniprot_fasta) -> list[SeqRecord]:
    """40 real UniProt proteins of 150-400 residues (the identity tools' tests mutate and split them)."""
    return [r for r in read_train(uniprot_fasta) if 150 <= len(r.seq) <= 400][:40]


@pytest.fixture(scope="session")
def real_sequences(uniprot_fasta) -> list[str]:
    """A few real UniProt sequences of varied length (decoded back to letters)."""
    from plm.tokenizer import decode

    recs = [decode(r.tokens.tolist()) for r in read_fasta(uniprot_fasta)]
    return [s for s in recs if 20 <= len(s) <= 120][:8]


def tiny_model(flavour: str = "esm2", seed: int = 0, **kw) -> Transformer:
    cfg = ModelConfig(
        n_layer=kw.pop("n_layer", 3),
        n_embd=kw.pop("n_embd", 48),
        n_head=kw.pop("n_head", 4),
        flavour=flavour,
        **kw,
    )
    torch.manual_seed(seed)
    return Transformer(cfg).eval()


@pytest.fixture
def tiny_esm2() -> Transformer:
    return tiny_model("esm2")


@pytest.fixture
def tiny_progen2() -> Transformer:
    return tiny_model("progen2", rotary_dim=6)
