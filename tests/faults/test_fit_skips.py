"""Issue 23 item 7: records plm fit skips under on_invalid=skip are counted, said at start and stored."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from plm.data.datamodule import ProteinDataModule
from plm.reliability.run_dir import DATA_REPORT_NAME, DataReport

pytestmark = pytest.mark.reliability

FASTA = ">a\nMKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ\n>b bad\nMKT1AYIAK\n>c\n>d\nMKVLAAGIVGLLLAAPAQA\n"


@pytest.fixture
def datamodule(tmp_path) -> ProteinDataModule:
    (tmp_path / "bad.fa").write_text(FASTA)
    (tmp_path / "good.fa").write_text(">g\nMKVLAAGIVGLLLAAPAQAMKTAYIAKQRQ\n")
    return ProteinDataModule(
        sources={"mine": str(tmp_path / "bad.fa"), "clean": str(tmp_path / "good.fa")},
        eval_sets={"held": str(tmp_path / "bad.fa")},
        row_len=64,
        val_fraction=0.0,
    )


def test_skipped_records_are_counted_and_said_at_start(datamodule):
    with pytest.warns(UserWarning) as caught:
        datamodule.setup("fit")
    said = [str(w.message) for w in caught if "skipped" in str(w.message)]
    assert len(said) == 2  # the training source and the eval set, each once
    assert "data.sources 'mine': 2 FASTA record(s) skipped under on_invalid=skip" in said[0]
    assert "character outside the alphabet: 1" in said[0] and "empty sequence: 1" in said[0]
    assert "record 'b'" in said[0] and "kept 2" in said[0]
    report = datamodule.fasta_report["data.sources.mine"]
    assert report["records"] == 2 and report["rejected"] == {
        "character outside the alphabet": 1,
        "empty sequence": 1,
    }
    assert datamodule.fasta_report["data.sources.clean"] == {
        "records": 1,
        "residues": 30,
        "rejected": {},
        "rejected_examples": {},
    }
    assert datamodule.state_dict()["fasta_report"] == datamodule.fasta_report  # in every checkpoint


@pytest.mark.filterwarnings("ignore:.*FASTA record")
def test_the_counts_are_stored_in_the_run_directory(datamodule, tmp_path):
    datamodule.setup("fit")
    trainer = SimpleNamespace(datamodule=datamodule, is_global_zero=True)
    DataReport(tmp_path / "run").on_fit_start(trainer, None)
    stored = json.loads((tmp_path / "run" / DATA_REPORT_NAME).read_text())
    assert stored["on_invalid"] == "skip"
    assert stored["sources"]["data.eval_sets.held"]["rejected"]["empty sequence"] == 1
