"""Training data: model-space (image, target) pairs through the runtime's own preprocessing, and the split
of whole cases into train / validation / test. Datasets on disk (pairs, masks) are read by
``vbmd_rt.runtime.io.dataset``, whose names are re-exported here.

``split`` assigns whole cases to train / validation / test (70/20/10 by default) from a seed.
``load_case`` returns model-space arrays: the normalisable image and the fraction of each model voxel
inside the native mask (the targets keep sub-voxel boundary information).
"""

from __future__ import annotations

import numpy as np

from vbmd_rt.runtime import preprocess
from vbmd_rt.runtime.io import aim
from vbmd_rt.runtime.io.dataset import DatasetError, Pair, discover, place, read_mask  # noqa: F401


def split(pairs: list[Pair], seed: int, fractions=(0.7, 0.2, 0.1)) -> dict[str, list[Pair]]:
    """Whole cases into train / val / test; every part gets at least one case when there are three."""
    order = np.random.default_rng([seed, 0x5B1]).permutation(len(pairs))
    n = len(pairs)
    n_val = max(1, int(round(fractions[1] * n))) if n >= 3 else 0
    n_test = max(1, int(round(fractions[2] * n))) if n >= 3 else 0
    n_train = n - n_val - n_test
    idx = {"train": order[:n_train], "val": order[n_train : n_train + n_val], "test": order[n_train + n_val :]}
    return {k: [pairs[i] for i in sorted(v)] for k, v in idx.items()}


def load_case(pair: Pair, spec: preprocess.Spec, side: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """(image, target) in model space: float32 image (normalised by ``spec``) and float32 fractions."""
    scan = aim.read_aim(pair.scan) if pair.scan.suffix.lower() != ".isq" else aim.read_isq(pair.scan)
    if scan.header.is_mask:
        raise DatasetError(pair.scan, "is a mask, not a greyscale scan", "check the dataset's pairing")
    image, geometry = preprocess.to_model(scan.data, spec, side, spacing_zyx=scan.spacing_zyx)
    target = preprocess.to_model_mask(read_mask(pair.mask, scan.header), geometry)
    return image, target
