"""Weights conversion between plm and fair-esm ESM-2, Hugging Face ESM, ProGen2 and Hugging Face GPT-J.

One adapter per format over a shared core (:mod:`.core`: key-map :class:`Rule` tables applied with a
strict missing/unexpected-key report): :mod:`.esm_fair`, :mod:`.esm_hf`, :mod:`.progen2`, plm's own
export (:mod:`.plm_export`), the Hugging Face writer (:mod:`.hf_writer`) and ``plm convert``'s dispatch
(:mod:`.dispatch`). Loading never unpickles code (:mod:`.files`). Every public name is re-exported here.
"""

from plm.model.convert.core import CONTACT_REGRESSION_NAME, Converted, Report, Rule
from plm.model.convert.dispatch import SourceFormat, TargetFormat, convert
from plm.model.convert.esm_fair import (
    ESM2_MAX_POSITIONS,
    ESM2_RELEASED_HEADS,
    ESM_FAIR_GLOBAL,
    ESM_FAIR_IGNORED,
    ESM_FAIR_LAYER,
    load_esm2_pt,
)
from plm.model.convert.esm_hf import (
    HF_ESM_GLOBAL,
    HF_ESM_IGNORED,
    HF_ESM_LAYER,
    esm_hf_config,
    esm_hf_state,
    load_hf_esm,
)
from plm.model.convert.files import read_hf_weights, torch_load_safe
from plm.model.convert.hf_writer import hf_target, save_hf
from plm.model.convert.plm_export import load_plm, save_plm
from plm.model.convert.progen2 import (
    GPTJ_IGNORED,
    MP_NUM,
    PROGEN2_TO_PLM,
    PROGEN2_VOCAB,
    UNMAPPED_LOGIT_BIAS,
    VocabChoice,
    VocabMap,
    gptj_hf_config,
    gptj_hf_state,
    load_progen2,
    pack_progen2_qkv,
    rotary_permutation,
    unpack_progen2_qkv,
)

__all__ = [
    "CONTACT_REGRESSION_NAME",
    "ESM2_MAX_POSITIONS",
    "ESM2_RELEASED_HEADS",
    "ESM_FAIR_GLOBAL",
    "ESM_FAIR_IGNORED",
    "ESM_FAIR_LAYER",
    "GPTJ_IGNORED",
    "HF_ESM_GLOBAL",
    "HF_ESM_IGNORED",
    "HF_ESM_LAYER",
    "MP_NUM",
    "PROGEN2_TO_PLM",
    "PROGEN2_VOCAB",
    "UNMAPPED_LOGIT_BIAS",
    "Converted",
    "Report",
    "Rule",
    "SourceFormat",
    "TargetFormat",
    "VocabChoice",
    "VocabMap",
    "convert",
    "esm_hf_config",
    "esm_hf_state",
    "gptj_hf_config",
    "gptj_hf_state",
    "hf_target",
    "load_esm2_pt",
    "load_hf_esm",
    "load_plm",
    "load_progen2",
    "pack_progen2_qkv",
    "read_hf_weights",
    "rotary_permutation",
    "save_hf",
    "save_plm",
    "torch_load_safe",
    "unpack_progen2_qkv",
]
