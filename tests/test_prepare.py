"""`plm data prepare`: equivalence with the in-memory reader, validation policy, resume, corruption
detection, clusters, and training from a prepared directory."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from plm.data.clusters import build_clusters, exclude_records, id_hashes, load_clusters
from plm.data.fasta import FastaError, read_fasta
from plm.data.prepare import SHARDS, main, prepare
from plm.data.store import TokenStore, split_fasta
from plm.tokenizer import decode, encode_residues


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def plain_copy(src: Path, dst: Path) -> Path:
    with gzip.open(src, "rb") as fh:
        return write(dst, fh.read())


def run(tmp_path: Path, fasta_text: str | bytes, name: str = "in.fasta", **kw) -> tuple[dict, Path]:
    fa = write(tmp_path / name, fasta_text)
    out = tmp_path / "out"
    kw.setdefault("progress", False)
    kw.setdefault("workers", 1)
    return prepare({"s": [fa]}, out, val_fraction=kw.pop("val_fraction", 0.0), **kw), out


def test_real_fixture_matches_in_memory_reader(tmp_path, uniprot_fasta, metagenomic_fasta):
    top = prepare(
        {"u": [uniprot_fasta], "m": [metagenomic_fasta]},
        tmp_path / "out",
        val_fraction=0.1,
        workers=2,
        progress=False,
    )
    for name, path in (("u", uniprot_fasta), ("m", metagenomic_fasta)):
        ref_train, ref_val = split_fasta(name, [path], 0.1)
        train = TokenStore.open(tmp_path / "out" / name / "train", verify=True)
        val = TokenStore.open(tmp_path / "out" / name / "val", verify=True)
        assert np.array_equal(train.offsets, ref_train.offsets) and np.array_equal(
            train.tokens, ref_train.tokens
        )
        assert np.array_equal(val.offsets, ref_val.offsets) and np.array_equal(val.tokens, ref_val.tokens)
        assert top["sources"][name]["train"]["records"] == len(ref_train)
        man = json.loads((tmp_path / "out" / name / "manifest.json").read_text())
        assert sum(man["train"]["length_histogram"].values()) == len(ref_train)
        assert man["inputs"][0]["size"] == path.stat().st_size and "mtime" in man["inputs"][0]
    assert set(top["files"]) >= {"u/train/tokens.bin", "m/val/offsets.npy", "u/manifest.json"}
    assert not (tmp_path / "out" / SHARDS).exists()  # shards are removed once linked into the stores


def test_many_shards_and_workers_give_the_same_store(tmp_path, uniprot_fasta):
    fa = plain_copy(uniprot_fasta, tmp_path / "u.fasta")
    prepare({"u": [fa]}, tmp_path / "one", val_fraction=0.05, workers=1, progress=False)
    prepare({"u": [fa]}, tmp_path / "many", val_fraction=0.05, workers=2, shard_size=8 << 10, progress=False)
    man = json.loads((tmp_path / "many" / "u" / "manifest.json").read_text())
    assert man["shards"] > 10
    for split in ("train", "val"):
        a, b = (
            TokenStore.open(tmp_path / "one" / "u" / split),
            TokenStore.open(tmp_path / "many" / "u" / split, verify=True),
        )
        assert np.array_equal(a.offsets, b.offsets) and np.array_equal(a.tokens, b.tokens)
        assert all(np.array_equal(a.get(i), b.get(i)) for i in range(len(a)))
    # the many-shard store keeps one token part per shard (hard-linked, not concatenated) ...
    meta = json.loads((tmp_path / "many" / "u" / "train" / "store.json").read_text())
    assert len(meta["parts"]) > 10 and meta["parts"][0] == "tokens.bin"
    a, b = (
        TokenStore.open(tmp_path / "one" / "u" / "train"),
        TokenStore.open(tmp_path / "many" / "u" / "train"),
    )
    edge = int(b.tokens.bounds[3])  # ... and slices across a part boundary read through
    assert np.array_equal(b.tokens[edge - 7 : edge + 5], a.tokens[edge - 7 : edge + 5]) and len(
        b.tokens
    ) == len(a.tokens)
    # a lost part is an incomplete store, never read as valid
    (tmp_path / "many" / "u" / "train" / meta["parts"][4]).unlink()
    with pytest.raises(ValueError, match=r"tokens\.004\.bin: missing"):
        TokenStore.open(tmp_path / "many" / "u" / "train")


GOOD = ">a first\nMKTAYIAK\nQRQIS\n>b\nLLGVV\n"
BAD_CASES = {
    # case: (fasta text, error regex naming file + record + reason, counted reason under "skip")
    "empty": (
        GOOD + ">c empty\n\n>d\nMK\n",
        r"in\.fasta: record 'c' at byte \d+: empty sequence",
        "empty sequence",
    ),
    "alphabet": (
        GOOD + ">c\nMKJ\n",
        r"in\.fasta: record 'c' .*character outside the alphabet \('J' at position 3\)",
        "character outside the alphabet",
    ),
    "non_ascii": (GOOD + ">c\nMKÄ\n", r"record 'c' .*non-ASCII bytes", "non-ASCII bytes in sequence"),
    "too_long": (
        GOOD + ">c\n" + "A" * 50 + "\n",
        r"record 'c' .*longer than max_length=20",
        "longer than max_length=20",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_malformed_records_error_or_counted_skip(tmp_path, case):
    text, pattern, reason = BAD_CASES[case]
    with pytest.raises(FastaError, match=pattern):
        run(tmp_path, text, max_length=20)
    top, out = run(tmp_path, text, on_invalid="skip", max_length=20)
    assert top["sources"]["s"]["rejected"] == {reason: 1}
    man = json.loads((out / "s" / "manifest.json").read_text())
    assert "record 'c'" in man["rejected_examples"][reason][0]
    assert len(TokenStore.open(out / "s" / "train")) == (3 if case == "empty" else 2)


def test_x_policy_maps_unknown_letters(tmp_path):
    _, out = run(tmp_path, ">c\nMKJB\n", on_invalid="x")
    assert TokenStore.open(out / "s" / "train").get(0).tolist() == encode_residues("MKXB").tolist()


def test_errors_are_gathered_into_one_message(tmp_path):
    with pytest.raises(
        FastaError, match=r"(?s)2 invalid record.*record 'c'.*record 'e'.*--on-invalid skip"
    ) as info:
        run(tmp_path, GOOD + ">c\nMK1\n>d\nMK\n>e\n\n")
    assert "empty sequence" in str(info.value)


@pytest.mark.parametrize(
    "text,pattern",
    [
        ("MKV\n>a\nMK\n", r"in\.fasta: byte 0: sequence data before the first '>' header"),
        (">a\nMK\n>\nMK\n", r"in\.fasta: byte 6: header '>' has no identifier"),
    ],
)
def test_structural_errors_even_when_skipping(tmp_path, text, pattern):
    with pytest.raises(FastaError, match=pattern):
        run(tmp_path, text, on_invalid="skip")


def test_crlf_lowercase_blank_lines_and_stop_are_accepted(tmp_path):
    messy = "\r\n\r\n>a first\r\nmktayiak\r\n\r\nQRQIS*\r\n>  b\r\nLLG VV\r\n"
    _, out = run(tmp_path, messy)
    store = TokenStore.open(out / "s" / "train")
    assert [store.get(i).tolist() for i in range(len(store))] == [
        encode_residues("MKTAYIAKQRQIS").tolist(),
        encode_residues("LLGVV").tolist(),
    ]


def test_duplicate_ids_are_a_counted_skip_across_files_and_shards(tmp_path):
    a = write(tmp_path / "a.fasta", "".join(f">r{i}\n{'MKV' * (i + 5)}\n" for i in range(200)))
    b = write(tmp_path / "b.fasta", ">r3 again\nWWWW\n>new\nCCCC\n>r150\nHHHH\n")
    top = prepare(
        {"s": [a, b]}, tmp_path / "out", val_fraction=0.0, shard_size=1024, workers=2, progress=False
    )
    assert top["sources"]["s"]["rejected"] == {"duplicate identifier": 2}
    store = TokenStore.open(tmp_path / "out" / "s" / "train")
    assert len(store) == 201 and store.get(200).tolist() == encode_residues("CCCC").tolist()
    man = json.loads((tmp_path / "out" / "s" / "manifest.json").read_text())
    assert "record 'r3' at byte 0" in man["rejected_examples"]["duplicate identifier"][0]


class Stop(Exception):
    pass


def _interrupt_after(n: int):
    done = []

    def hook(source: str, key: str) -> None:
        done.append(key)
        if len(done) >= n:
            raise Stop(key)

    return hook, done


def test_interrupted_prepare_resumes_without_redoing_finished_shards(tmp_path, uniprot_fasta):
    fa = plain_copy(uniprot_fasta, tmp_path / "u.fasta")
    kw = {"val_fraction": 0.05, "shard_size": 32 << 10, "workers": 1, "progress": False}
    hook, first = _interrupt_after(2)
    with pytest.raises(Stop):
        prepare({"u": [fa]}, tmp_path / "out", on_shard_done=hook, **kw)
    assert not (tmp_path / "out" / "u").exists()
    assert sorted(p.name for p in (tmp_path / "out" / SHARDS / "u").iterdir()) == sorted(first)
    hook2, second = _interrupt_after(10**9)
    prepare({"u": [fa]}, tmp_path / "out", on_shard_done=hook2, **kw)
    assert second and not set(first) & set(second)  # finished shards were reused, the rest parsed
    prepare({"u": [fa]}, tmp_path / "clean", **kw)
    for split in ("train", "val"):
        a, b = (
            TokenStore.open(tmp_path / "out" / "u" / split),
            TokenStore.open(tmp_path / "clean" / "u" / split),
        )
        assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.offsets, b.offsets)
    hook3, third = _interrupt_after(10**9)
    prepare({"u": [fa]}, tmp_path / "out", on_shard_done=hook3, **kw)
    assert third == []  # up to date: nothing parsed again


def test_truncated_or_corrupt_shard_is_redone(tmp_path, uniprot_fasta, capsys):
    fa = plain_copy(uniprot_fasta, tmp_path / "u.fasta")
    kw = {"val_fraction": 0.05, "shard_size": 32 << 10, "workers": 1, "progress": False}
    hook, first = _interrupt_after(3)
    with pytest.raises(Stop):
        prepare({"u": [fa]}, tmp_path / "out", on_shard_done=hook, **kw)
    shards = tmp_path / "out" / SHARDS / "u"
    trunc, flip = shards / first[0] / "train" / "tokens.bin", shards / first[1] / "train" / "tokens.bin"
    trunc.write_bytes(trunc.read_bytes()[:-5])
    data = bytearray(flip.read_bytes())
    data[10] ^= 1
    flip.write_bytes(bytes(data))
    hook2, second = _interrupt_after(10**9)
    prepare({"u": [fa]}, tmp_path / "out", on_shard_done=hook2, **kw)
    err = capsys.readouterr().err
    assert "truncated" in err and "crc32 differs" in err
    assert first[0] in second and first[1] in second and first[2] not in second
    prepare({"u": [fa]}, tmp_path / "clean", **kw)
    a, b = (
        TokenStore.open(tmp_path / "out" / "u" / "train"),
        TokenStore.open(tmp_path / "clean" / "u" / "train"),
    )
    assert np.array_equal(a.tokens, b.tokens)


def test_stores_checksummed_with_sha256_by_older_versions_still_verify(tmp_path, metagenomic_fasta):
    import hashlib

    prepare({"m": [metagenomic_fasta]}, tmp_path / "out", val_fraction=0.0, workers=1, progress=False)
    store = tmp_path / "out" / "m" / "train"
    meta_path = store / "store.json"
    meta = json.loads(meta_path.read_text())
    assert all(set(e) == {"size", "crc32"} for e in meta["files"].values())
    for name, entry in meta["files"].items():  # rewrite the metadata the way the sha256 format had it
        del entry["crc32"]
        entry["sha256"] = hashlib.sha256((store / name).read_bytes()).hexdigest()
    meta_path.write_text(json.dumps(meta))
    TokenStore.open(store, verify=True)
    tok = store / "tokens.bin"
    data = bytearray(tok.read_bytes())
    data[7] ^= 1
    tok.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"tokens.bin: sha256 differs"):
        TokenStore.open(store, verify=True)


def test_truncated_or_corrupt_store_is_never_read_as_valid(tmp_path, metagenomic_fasta):
    prepare({"m": [metagenomic_fasta]}, tmp_path / "out", val_fraction=0.0, workers=1, progress=False)
    store = tmp_path / "out" / "m" / "train"
    tok = store / "tokens.bin"
    data = bytearray(tok.read_bytes())
    data[100] ^= 3
    tok.write_bytes(bytes(data))
    TokenStore.open(store)  # same size: only the checksum can tell
    with pytest.raises(ValueError, match=r"corrupt store \(.*tokens.bin: crc32 differs"):
        TokenStore.open(store, verify=True)
    tok.write_bytes(bytes(data[:-10]))
    with pytest.raises(ValueError, match=r"truncated or corrupt"):
        TokenStore.open(store)
    # and a re-run notices the damaged output and rebuilds it
    prepare({"m": [metagenomic_fasta]}, tmp_path / "out", val_fraction=0.0, workers=1, progress=False)
    TokenStore.open(store, verify=True)


def _ids(path: Path) -> list[str]:
    return [r.id for r in read_fasta(path)]


def test_clusters_round_trip_and_sampling(tmp_path, metagenomic_fasta):
    ids = _ids(metagenomic_fasta)
    groups = {f"rep{c}": ids[c * 40 : (c + 1) * 40] for c in range(10)}  # 400 of 500 records clustered
    lines = [f"{rep}\t{m}" for rep, ms in groups.items() for m in ms] + ["rep0\tnot_a_record"]
    tsv = write(tmp_path / "c.tsv", "\n".join(lines) + "\n")
    top = prepare(
        {"m": [metagenomic_fasta]},
        tmp_path / "out",
        clusters={"m": tsv},
        val_fraction=0.0,
        workers=1,
        progress=False,
    )
    assert top["sources"]["m"]["train"]["records"] == 500
    man = json.loads((tmp_path / "out" / "m" / "manifest.json").read_text())
    assert man["train"]["clusters"]["members_not_in_train"] == 1
    assert man["train"]["clusters"]["singleton_clusters_added"] == 100
    offsets, members = load_clusters(tmp_path / "out" / "m" / "train", 500)
    assert len(offsets) - 1 == 110
    for c, (rep, ms) in enumerate(groups.items()):  # cluster order = first appearance in the TSV
        assert [ids[i] for i in members[offsets[c] : offsets[c + 1]]] == ms
    assert sorted(members.tolist()) == list(range(500))
    from plm.data.datamodule import ProteinDataModule

    dm = ProteinDataModule(sources={"m": str(tmp_path / "out" / "m")}, row_len=64, rows_per_batch=2)
    dm.setup()
    draw = dm.sampler.draw(np.arange(2000))
    in_big = np.isin(draw.record, np.arange(400))
    # cluster-first sampling: 10 of 110 clusters hold 400 of the 500 records
    assert abs(in_big.mean() - 10 / 110) < 0.05


def test_cluster_tsv_errors(tmp_path):
    tsv = write(tmp_path / "bad.tsv", "r1\tm1\nonlyone\n")
    with pytest.raises(ValueError, match=r"bad\.tsv: line 2: expected 'representative<TAB>member'"):
        build_clusters(tsv, id_hashes([b"m1"]))
    with pytest.raises(ValueError, match=r"no source named 'x'"):
        prepare({"s": [tsv]}, tmp_path / "o", clusters={"x": tsv}, progress=False)


def test_exclusion_list(tmp_path):
    off, mem = exclude_records(6, None, np.array([1, 4]))
    assert off.tolist() == [0, 1, 2, 3, 4] and mem.tolist() == [0, 2, 3, 5]
    off, mem = exclude_records(6, (np.array([0, 2, 3, 6]), np.array([0, 1, 2, 3, 4, 5])), np.array([2]))
    assert off.tolist() == [0, 2, 5] and mem.tolist() == [0, 1, 3, 4, 5]
    with pytest.raises(ValueError, match=r"ex\.npy: record indices must be in \[0, 6\)"):
        exclude_records(6, None, np.array([6]), where="ex.npy")
    with pytest.raises(ValueError, match="excludes all 2 records"):
        exclude_records(2, None, np.array([0, 1]))


def test_datamodule_trains_from_prepared_dir(tmp_path, uniprot_fasta):
    import torch

    from plm.data.datamodule import ProteinDataModule
    from plm.lit import MaskedLM

    prepare({"a": [uniprot_fasta]}, tmp_path / "out", val_fraction=0.05, workers=1, progress=False)
    np.save(tmp_path / "out" / "a" / "exclude.npy", np.arange(0, 400))
    dm = ProteinDataModule(sources={"a": str(tmp_path / "out" / "a")}, row_len=64, rows_per_batch=2)
    dm.setup()
    assert dm.sampler.units(0) == len(dm.train_stores[0]) - 400
    assert (dm.sampler.draw(np.arange(500)).record >= 400).all()
    batch = next(iter(dm.train_dataloader()))
    assert batch["tokens"].shape == (2, 64) and "a" in dm.val_stores
    model = MaskedLM(size="tiny", total_steps=10)
    loss, _ = model.loss(batch)
    assert torch.isfinite(loss)


def test_cli(tmp_path, metagenomic_fasta, capsys):
    assert (
        main(
            ["--source", f"m={metagenomic_fasta}", "--out", str(tmp_path / "o"), "--quiet", "--workers", "1"]
        )
        == 0
    )
    assert "m: train" in capsys.readouterr().out
    assert main(["--source", f"m={tmp_path / 'nope.fa'}", "--out", str(tmp_path / "o2"), "--quiet"]) == 2
    assert "nope.fa: file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--source", "justaname", "--out", str(tmp_path / "o3")])


def test_validation_mask_is_vectorised_is_validation():
    from plm.data.store import is_validation, validation_mask

    rng = np.random.default_rng(0)
    seqs = [rng.integers(4, 24, int(n), dtype=np.uint8) for n in rng.integers(1, 400, 3000)]
    store = TokenStore.from_arrays("x", seqs)
    mask = validation_mask(store.tokens, store.offsets, 0.1)
    assert mask.tolist() == [is_validation(s, 0.1) for s in seqs]
    assert 0.08 < mask.mean() < 0.12
    assert not validation_mask(store.tokens, store.offsets, 0.0).any()


def test_held_out_rule_is_pinned():
    """The split decides which sequences a model never trained on: a faster implementation must give the
    same answer as every earlier version (values from the implementation before the in-place rewrite),
    empty records included."""
    import hashlib

    from plm.data.store import validation_mask

    rng = np.random.default_rng(7)
    lens = rng.integers(0, 300, 2000) * (rng.random(2000) > 0.05)
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    tokens = rng.integers(4, 24, int(offsets[-1])).astype(np.uint8)
    mask = validation_mask(tokens, offsets, 0.1)
    assert int(mask.sum()) == 188
    assert np.flatnonzero(mask)[:12].tolist() == [11, 13, 14, 24, 38, 46, 65, 78, 95, 159, 164, 184]
    assert hashlib.sha256(np.packbits(mask).tobytes()).hexdigest()[:16] == "51d1d367a228ed4f"


def test_only_a_greater_than_sign_at_a_line_start_opens_a_record(tmp_path, monkeypatch):
    """Headers are found from the line breaks; blocks cut every few records must not change the result."""
    import plm.data.prepare.parse as prep

    fa = tmp_path / "gt.fasta"
    records = [(f"r{i}", "ACDEFGHIKLMNPQRSTVWY"[: 5 + i % 15]) for i in range(60)]
    fa.write_text(
        "".join(f">{rid} desc with > inside and a>b\r\n{seq[:4]}\r\n{seq[4:]}\n" for rid, seq in records)
    )
    monkeypatch.setattr(prep, "BLOCK", 96)  # many blocks, each cut just before a header
    prepare({"g": [fa]}, tmp_path / "out", val_fraction=0.0, workers=1, progress=False)
    store = TokenStore.open(tmp_path / "out" / "g" / "train", verify=True)
    assert len(store) == 60
    assert [decode(store.get(i).tolist()) for i in range(60)] == [seq for _, seq in records]


def test_id_hashes_do_not_depend_on_the_other_ids_of_the_batch(tmp_path):
    """Regression: ids were hashed over the widest id of each block, so prepare's ids.npy and a cluster
    TSV's hashes disagreed whenever id lengths differed (real MGnify data: 91% of members unmatched)."""
    short, long_ = [b"a", b"MGYG000000003_01622"], [b"x" * 200, b"y" * 300]
    assert np.array_equal(id_hashes(short), id_hashes(short + long_)[:2])
    text = "".join(f">{i.decode()} desc\nMKV{'A' * n}\n" for n, i in enumerate(short + long_))
    fa = write(tmp_path / "ids.fasta", text)
    prepare({"s": [fa]}, tmp_path / "out", val_fraction=0.0, workers=1, progress=False)
    ids = np.load(tmp_path / "out" / "s" / "train" / "ids.npy")
    assert np.array_equal(ids, id_hashes(short + long_))
    for group in (short, long_):
        assert np.array_equal(id_hashes(group), ids[[(short + long_).index(g) for g in group]])


# ---- damaged and empty inputs, atomic output -------------------------------------------------------------
TRUNCATED = gzip.compress(b"".join(b">r%d\n%s\n" % (i, b"MKVLAAGIT" * 30) for i in range(3000)))


def test_truncated_gzip_is_a_clear_error_or_a_counted_skip(tmp_path, capsys):
    """Bug 7: prepare's own parser ended in a traceback (EOFError) on a truncated .gz."""
    broken = write(tmp_path / "broken.fasta.gz", TRUNCATED[: len(TRUNCATED) // 2])
    argv = ["--source", f"x={broken}", "--out", str(tmp_path / "out"), "--quiet", "--workers", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "broken.fasta.gz: unreadable gzip tail" in err and "truncated or corrupt gzip stream" in err
    assert "--on-invalid skip" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "x").exists()
    assert main(argv + ["--on-invalid", "skip", "--val-fraction", "0"]) == 0
    out, err = capsys.readouterr()
    assert "rejected: unreadable gzip tail: 1" in out
    assert "warning: source 'x': skipped" in err and "broken.fasta.gz" in err
    kept = list(read_fasta(broken, on_invalid="skip"))  # the line reader keeps the same records
    store = TokenStore.open(tmp_path / "out" / "x" / "train", verify=True)
    assert 0 < len(store) == len(kept) < 3000 and np.array_equal(store.get(len(store) - 1), kept[-1].tokens)


@pytest.mark.parametrize("content", [b"", b"\n  \r\n"], ids=["zero-bytes", "blank"])
def test_empty_fasta_is_an_error_naming_the_file(tmp_path, capsys, content):
    """Bug 8: an empty FASTA became an empty store with "rejected: none" and exit 0."""
    empty = write(tmp_path / "empty.fasta", content)
    good = write(tmp_path / "good.fasta", GOOD)
    argv = ["--source", f"s={good},{empty}", "--out", str(tmp_path / "out"), "--quiet", "--workers", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "empty.fasta: empty file (no FASTA records" in err and "on_invalid=skip" in err
    assert not (tmp_path / "out" / "s").exists()
    # under skip the file is one counted, named rejection ...
    assert main(argv + ["--on-invalid", "skip", "--val-fraction", "0"]) == 0
    out, err = capsys.readouterr()
    assert "rejected: empty file: 1" in out and "empty.fasta" in err
    assert len(TokenStore.open(tmp_path / "out" / "s" / "train")) == 2
    # ... but a source left with no record at all is an error whatever the policy
    alone = ["--source", f"e={empty}", "--out", str(tmp_path / "out2"), "--quiet", "--on-invalid", "skip"]
    assert main(alone) == 2
    assert "source 'e'" in capsys.readouterr().err and not (tmp_path / "out2" / "e").exists()


def _temporaries(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".tmp" in p.name)


def test_failed_shards_and_stores_leave_no_temporaries_and_stale_ones_are_cleared(tmp_path, monkeypatch):
    import plm.data.prepare.finalise as prep

    good = write(tmp_path / "in.fasta", "".join(f">r{i}\n{'MKV' * (i + 5)}\n" for i in range(300)))
    out = tmp_path / "out"
    kw = {"val_fraction": 0.1, "workers": 1, "progress": False, "shard_size": 1024}
    with pytest.raises(FastaError):  # error mode abandons the shards with invalid records
        prepare({"s": [write(tmp_path / "bad.fasta", GOOD + ">c\nMKJ\n")]}, out, **kw)
    assert _temporaries(out) == []
    prepare({"s": [good]}, out, **kw)
    before = np.asarray(TokenStore.open(out / "s" / "train").tokens).tobytes()

    def half_written(dst: Path, *args, **kwargs):
        dst.mkdir(parents=True)
        (dst / "tokens.bin").write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(prep, "_write_store", half_written)  # a failure while the new store is written ...
    good.write_text(GOOD)
    with pytest.raises(OSError):
        prepare({"s": [good]}, out, **kw)
    assert _temporaries(out) == []  # ... leaves no temporary and the old store intact
    assert np.asarray(TokenStore.open(out / "s" / "train", verify=True).tokens).tobytes() == before
    monkeypatch.undo()
    # what a killed run leaves (hidden temporaries of a source and of a shard) goes on the next run
    (out / ".s.tmp-999-dead").mkdir()
    (out / SHARDS / "s").mkdir(parents=True, exist_ok=True)
    (out / SHARDS / "s" / ".0000-000000000000000.tmp-999-dead").mkdir()
    (out / ".manifest.json.tmp-999-dead").write_text("{")
    prepare({"s": [good]}, out, **kw)
    assert (
        _temporaries(out) == []
        and len(TokenStore.open(out / "s" / "train")) + len(TokenStore.open(out / "s" / "val")) == 2
    )


def test_plm_data_commands_are_dispatched_from_plm_data(capsys):
    import importlib

    from plm.cli import main as plm_main
    from plm.data.cli import SUBCOMMANDS

    assert set(SUBCOMMANDS) == {"prepare", "decontaminate", "split-by-identity", "cluster"}
    for target in SUBCOMMANDS.values():  # every subcommand still reaches a main after the move
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func))
    assert plm_main(["data", "--help"]) == 0 and "split-by-identity" in capsys.readouterr().out
