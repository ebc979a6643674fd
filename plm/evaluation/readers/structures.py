"""``structures``: protein chains with Cβ coordinates, from PDB / mmCIF / BinaryCIF files (biotite,
imported only when one is read) or prepared ``.npz``; contact maps derive from the coordinates."""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class StructureRecord:
    """A chain's observed sequence and Cβ coordinates (NaN where missing); contacts derive from these."""

    id: str
    sequence: str
    cb: np.ndarray  # (L, 3) float32
    split: str = ""
    meta: dict = field(default_factory=dict)

    def distances(self) -> np.ndarray:
        diff = self.cb[:, None, :] - self.cb[None, :, :]
        return np.sqrt((diff**2).sum(-1))

    def contacts(self, threshold: float = 8.0) -> np.ndarray:
        """(L, L) int8: 1 contact, 0 not, -1 unknown (missing coordinates)."""
        d = self.distances()
        out = (d < threshold).astype(np.int8)
        out[np.isnan(d)] = -1
        return out


def virtual_cb(n: np.ndarray, ca: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Ideal Cβ from backbone atoms (trRosetta/ESM formula), used for glycine and missing Cβ."""
    b, cc = ca - n, c - ca
    a = np.cross(b, cc)
    return -0.58273431 * a + 0.56802827 * b - 0.54067466 * cc + ca


def read_structure(path: str | Path, chain: str | None = None) -> StructureRecord:
    """A chain from a PDB / mmCIF / BinaryCIF file (biotite) or a prepared ``.npz`` (keys seq, CB).

    Model 1, standard amino acids (MSE read as M); residues without N/CA/C are skipped; Gly and
    residues without Cβ get the virtual Cβ."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such structure file")
    if path.suffix == ".npz":
        data = np.load(path)
        return StructureRecord(path.stem, str(data["seq"]), data["CB"].astype(np.float32))
    import biotite.structure as struc
    import biotite.structure.io as strucio
    from biotite.sequence import ProteinSequence

    name = path.name
    if name.endswith(".gz"):
        import tempfile

        with gzip.open(path, "rb") as fh, tempfile.TemporaryDirectory() as tmp:
            inner = Path(tmp) / name[:-3]
            inner.write_bytes(fh.read())
            atoms = strucio.load_structure(inner, model=1)
    else:
        atoms = strucio.load_structure(path, model=1)
    atoms = atoms[struc.filter_amino_acids(atoms) & ~atoms.hetero | (atoms.res_name == "MSE")]
    chains = list(dict.fromkeys(atoms.chain_id.tolist()))
    if not chains:
        raise ValueError(f"{path}: no protein chain found")
    chain = chain or chains[0]
    if chain not in chains:
        raise ValueError(f"{path}: no chain {chain!r}; chains present: {chains}")
    atoms = atoms[atoms.chain_id == chain]
    seq, cbs = [], []
    for res in struc.residue_iter(atoms):
        coords = {a.atom_name: a.coord for a in res}
        if not all(k in coords for k in ("N", "CA", "C")):
            continue
        rn = "MET" if res.res_name[0] == "MSE" else res.res_name[0]
        try:
            seq.append(ProteinSequence.convert_letter_3to1(rn))
        except KeyError:
            seq.append("X")
        cb = coords.get("CB")
        if cb is None or rn == "GLY":
            cb = virtual_cb(coords["N"], coords["CA"], coords["C"])
        cbs.append(cb)
    return StructureRecord(
        f"{path.name.split('.')[0]}_{chain}", "".join(seq), np.asarray(cbs, dtype=np.float32)
    )
