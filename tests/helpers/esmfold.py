"""A tiny random ESMFold saved like the real one, for tests of the pLDDT scorer and its users."""

from __future__ import annotations

from pathlib import Path

import torch


def build_tiny_esmfold(directory: Path) -> Path:
    """A randomly initialised ESMFold of toy size saved like the real one (config.json + safetensors)."""
    from transformers import EsmConfig, EsmForProteinFolding

    structure = {
        "sequence_dim": 32,
        "pairwise_dim": 16,
        "ipa_dim": 8,
        "resnet_dim": 16,
        "num_heads_ipa": 2,
        "num_qk_points": 2,
        "num_v_points": 2,
        "num_blocks": 1,
        "num_resnet_blocks": 1,
    }
    trunk = {
        "num_blocks": 1,
        "sequence_state_dim": 32,
        "pairwise_state_dim": 16,
        "sequence_head_width": 8,
        "pairwise_head_width": 8,
        "position_bins": 8,
        "max_recycles": 1,
        "chunk_size": None,
        "structure_module": structure,
    }
    from plm.tokenizer import TOKENS

    cfg = EsmConfig(
        vocab_size=33,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        pad_token_id=1,
        mask_token_id=32,
        position_embedding_type="rotary",
        token_dropout=True,
        is_folding_model=True,
        vocab_list=list(TOKENS),
        max_position_embeddings=1026,
        esmfold_config={"fp16_esm": True, "lddt_head_hid_dim": 16, "trunk": trunk},
    )  # fp16_esm as released
    torch.manual_seed(0)
    model = EsmForProteinFolding(cfg)
    with (
        torch.no_grad()
    ):  # spread the lDDT logits so pLDDT differs between sequences (default init gives ~50)
        model.lddt_head[-1].weight.normal_(std=0.5)
    model.save_pretrained(directory)
    return directory
