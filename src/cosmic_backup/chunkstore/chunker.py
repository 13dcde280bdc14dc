"""Content-defined chunking with pyfastcdc (FastCDC 2020), seeded from the data key
(docs/format.md, "Chunk ids and chunking")."""

from __future__ import annotations

import pyfastcdc

from cosmic_backup.errors import OperationFailed
from cosmic_backup.format.objects import DataKey
from cosmic_backup.format.store_config import ChunkerParams

SEED_LABEL = "chunker-seed"
SEED_BYTES = 8
SEED_MASK = (1 << 63) - 1  # pyfastcdc refuses seeds of 2**63 and more


def chunker_seed(data_key: DataKey) -> int:
    return int.from_bytes(data_key.derive(SEED_LABEL)[:SEED_BYTES], "big") & SEED_MASK


def make_chunker(params: ChunkerParams, seed: int) -> pyfastcdc.FastCDC:
    chunker = pyfastcdc.FastCDC(
        params.avg,
        min_size=params.min,
        max_size=params.max,
        normalized_chunking=params.normalized,  # type: ignore[arg-type]
        seed=seed,
    )
    # The pure-Python fallback cuts the same chunks ~100 times slower: a backup of a large
    # database would take hours. Refuse it rather than crawl.
    if not type(chunker).__module__.startswith("pyfastcdc.cy"):
        raise OperationFailed(
            "pyfastcdc runs without its compiled extension, which would make backups about "
            "100 times slower: reinstall it (pip install --force-reinstall pyfastcdc)."
        )
    return chunker
