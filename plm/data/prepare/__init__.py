"""``plm data prepare``: FASTA / FASTA.gz → memory-mappable token stores, parallel, bounded, resumable.

Layout written under ``--out DIR``::

    DIR/manifest.json                      all sources: counts, residues, options, checksum of every file
    DIR/NAME/manifest.json                 one source: inputs (size, mtime), rejected records, histogram
    DIR/NAME/{train,val}/tokens*.bin       uint8 residue tokens, records back to back, one part per shard
    DIR/NAME/{train,val}/offsets.npy       int64 record boundaries (records + 1)
    DIR/NAME/{train,val}/store.json        sizes + CRC-32 that ``TokenStore.open`` checks
    DIR/NAME/train/ids.npy                 uint64 hash of each record id (clusters, exclusion lists)
    DIR/NAME/train/clusters_*.npy          optional cluster index (``--clusters NAME=TSV``)

Why shards: input files are cut into byte ranges at ``>`` line starts (gzip files are one shard each,
they cannot be entered in the middle) and each shard is parsed by one worker process into its own small
store under ``DIR/.shards/NAME/``, written to a temporary directory and renamed when complete, with a
manifest holding its checksums. An interrupted run therefore leaves only complete shards; a re-run
verifies them (size + checksum) and parses only the missing or damaged ones. Finally the shards become
the parts of each store in file order (so the result does not depend on the worker count) by hard
links, not copies; duplicate ids are dropped, and the shard directories are deleted.

Validation policy: that of :mod:`plm.data.fasta` (one gzip rule, empty / outside the alphabet / over-long
records and empty or damaged files → an error naming the file, or a counted skip; text before the first
header or a header without identifier is always an error), parsed by its vectorised block reader, plus
two rules that need the view over all files of a source: duplicate ids (the first occurrence is kept,
later ones are a counted skip) and a source left without any record (always an error: nothing
downstream can use an empty store). Duplicates are found from 64-bit id hashes (8 bytes per record in
memory at the end, ~8 GB per 10⁹ records; a false duplicate needs a 64-bit collision, probability
≈ n²/2⁶⁵).

Every directory is published with :func:`plm.utils.atomic.atomic_directory` (a shard, a source) and the
top manifest with :func:`~plm.utils.atomic.atomic_write_text`: a failure at any point leaves the
previous output and no temporary behind, and a run killed outright leaves hidden temporaries that the
next run removes.

The work is split along its stages: :mod:`.plan` (shards and what an earlier run left reusable),
:mod:`.parse` (a shard → its small store, the worker pool), :mod:`.finalise` (shards → a source's
stores and manifest) and :mod:`.command` (:func:`prepare` and ``main``). The names below are re-exported
so ``plm.data.prepare.X`` keeps working; patch a module-level name on the submodule that uses it.
"""

from __future__ import annotations

from plm.data.prepare.command import main, parse_size, prepare
from plm.data.prepare.finalise import HIST_EDGES, IDS_FILE, STORE_META, finalize_source, first_occurrences
from plm.data.prepare.parse import BLOCK, MAX_PROBLEMS, keep_freed_memory, run_shard
from plm.data.prepare.plan import FORMAT, MANIFEST, SHARDS, Shard, plan_shards, reusable_shard, verify_files

__all__ = [
    "BLOCK",
    "FORMAT",
    "HIST_EDGES",
    "IDS_FILE",
    "MANIFEST",
    "MAX_PROBLEMS",
    "SHARDS",
    "STORE_META",
    "Shard",
    "finalize_source",
    "first_occurrences",
    "keep_freed_memory",
    "main",
    "parse_size",
    "plan_shards",
    "prepare",
    "reusable_shard",
    "run_shard",
    "verify_files",
]
