"""Sequence identity with MMseqs2: decontamination, identity-binned held-out sets, clustering (issue 11).

``mmseqs`` wraps the executable; ``fallback`` is an approximate pure-Python stand-in for tiny inputs.
"""

from plm.identity.mmseqs import Hit, MMseqs, MMseqsError, MMseqsNotFoundError, find_mmseqs, require_mmseqs

__all__ = ["Hit", "MMseqs", "MMseqsError", "MMseqsNotFoundError", "find_mmseqs", "require_mmseqs"]
