"""Generation throughput (new tokens/s) of plm's sampler vs transformers ``GPTJForCausalLM.generate``.

Same shape (a ProGen2-style GPT-J: parallel block, partial rotary, untied head), random weights, same
batch, same number of new tokens (min = max so both decode exactly ``--new`` tokens per row), same
sampling (temperature 0.9, top-p 0.8), fp32, KV cache on both sides.
    python -m benchmarks.bench_generate [--layers 6 --hidden 512 --heads 8 --rotary 32 --batch 8 --new 128]
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import interleaved, record
from plm.generate.sampling import SamplingConfig, sample_batch
from plm.model.config import ModelConfig
from plm.model.transformer import Transformer
from plm.tokenizer import CLS, EOS, PAD


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=6, help="Transformer blocks")
    p.add_argument("--hidden", type=int, default=512, help="hidden size")
    p.add_argument("--heads", type=int, default=8, help="attention heads")
    p.add_argument("--rotary", type=int, default=32, help="rotary dims per head (ProGen2: partial)")
    p.add_argument("--batch", type=int, default=8, help="sequences decoded together")
    p.add_argument("--new", type=int, default=128, help="new tokens per sequence")
    p.add_argument("--rounds", type=int, default=5, help="interleaved repetitions; the best is kept")
    a = p.parse_args()

    from transformers import GPTJConfig, GPTJForCausalLM

    torch.manual_seed(0)
    cfg = ModelConfig(
        n_layer=a.layers,
        n_embd=a.hidden,
        n_head=a.heads,
        flavour="progen2",
        rotary_dim=a.rotary,
        max_seq_len=a.new + 2,
    )
    ours = Transformer(cfg).eval()
    peer = GPTJForCausalLM(
        GPTJConfig(
            vocab_size=cfg.vocab_size,
            n_positions=a.new + 2,
            n_embd=a.hidden,
            n_layer=a.layers,
            n_head=a.heads,
            rotary_dim=a.rotary,
            bos_token_id=CLS,
            eos_token_id=EOS,
            pad_token_id=PAD,
            tie_word_embeddings=False,
        )
    ).eval()
    n_ours = sum(p.numel() for p in ours.parameters())
    n_peer = sum(p.numel() for p in peer.parameters())
    prompt = torch.full((a.batch, 1), CLS)
    sampling = SamplingConfig(temperature=0.9, top_p=0.8, min_length=a.new, max_length=a.new)

    def run_ours() -> float:
        t = time.perf_counter()
        tokens, _, _ = sample_batch(ours, prompt, sampling, torch.Generator().manual_seed(0))
        assert tokens.shape == (a.batch, 1 + a.new)
        return a.batch * a.new / (time.perf_counter() - t)

    def run_peer() -> float:
        torch.manual_seed(0)
        t = time.perf_counter()
        with torch.inference_mode():
            out = peer.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                do_sample=True,
                temperature=0.9,
                top_p=0.8,
                top_k=0,
                max_new_tokens=a.new,
                min_new_tokens=a.new,
                use_cache=True,
                pad_token_id=PAD,
                eos_token_id=EOS,
            )
        assert out.shape == (a.batch, 1 + a.new)
        return a.batch * a.new / (time.perf_counter() - t)

    run_ours(), run_peer()  # warm-up
    best = interleaved({"plm": run_ours, "peer": run_peer}, rounds=a.rounds)
    record(
        "generate",
        best["plm"],
        best["peer"],
        "tokens/s",
        shape=f"{a.layers}x{a.hidden}x{a.heads} rotary {a.rotary}",
        batch=a.batch,
        new_tokens=a.new,
        params={"plm": n_ours, "peer": n_peer},
        peer_name="transformers GPTJForCausalLM.generate",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
