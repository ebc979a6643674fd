"""plm.utils.hashing.mix64: the one counter-based hash behind data order, crops, splits and step seeds."""

import numpy as np

from plm.utils.hashing import mix64


def test_mix64_of_zero_is_splitmix64s_first_output():
    # SplitMix64 seeded with 0 (Steele et al. 2014; Vigna's splitmix64.c) first returns 0xE220A8397B1DCDAF
    assert int(mix64(0)) == 0xE220A8397B1DCDAF


def test_mix64_is_vectorised_and_order_sensitive():
    k = np.arange(1000)
    batch = mix64(7, k, 3)
    assert batch.dtype == np.uint64 and batch.shape == (1000,)
    assert [int(mix64(7, int(i), 3)) for i in (0, 1, 999)] == [int(batch[0]), int(batch[1]), int(batch[999])]
    assert len(set(batch.tolist())) == 1000  # no collisions among consecutive counters
    assert int(mix64(1, 2)) != int(mix64(2, 1))
