"""How well can MC2 be named in the randomised generator's thumbless short rows from the ends' sizes and joints?

    python scripts/identity_bayes.py [--rows 3000000] [--seed 0]

A row of two (MC2, MC3) or three (MC2, MC3, MC4) without a thumb has no end that says MC2: the stage reads how
its ends' heads' tips, heads and shafts differ, and in 30 % of hands a sesamoid beside MC2's head. This draws
rows from the distributions ``synth.families.sample_random`` draws them from (``DRAWS``, checked against the
generator by a test) and estimates the Bayes rate of those differences, measured without error: the differences
are binned, and the rule names as MC2 the end whose reading is the more frequent one in its bin (the mirrored
reading is the other end's); bins counted on half the rows, the rule scored on the other half, so the estimate
is a rule's accuracy: at least, not at most, what these differences allow (for rows of three a finer rule, tips
and sizes binned apart, reads about half a point higher). A sesamoid found beside MC2 in every hand that has one
names it outright. Not read: the heads' two axes apart, the domes and phalanges (they scale with the bone),
erosions (the generator draws them on MC2 in 35 % of hands), tips past the stack.
``scripts/identity_ceiling.py`` is the stage's own evidence on perfect measurements; where it comes close to
these rates, better measurements or more cues (the hand's side) are what can help.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

#: What ``families.sample_random`` draws per metacarpal (uniform ranges): its size relative to the hand's,
#: its head's tip against the row's joint level (mm), the hand's scale, and the shafts' and heads' own
#: factors on their two semi-axes (``*_mm``: the semi-axes they scale).
DRAWS = {
    "rel": {"MC2": (0.85, 1.15), "MC3": (0.85, 1.25), "MC4": (0.7, 1.0)},
    "dz": {"MC2": (-2.0, 1.0), "MC3": (-0.5, 2.5), "MC4": (-3.0, 0.0)},
    "scale": (0.75, 1.25),
    "shaft": ((0.85, 1.15), (0.8, 1.15)),
    "head": ((0.88, 1.12), (0.85, 1.12)),
    "shaft_mm": (4.6, 4.2),
    "head_mm": (7.6, 7.0),
    "sesamoid": 0.3,
}


def draw_rows(names: list[str], n: int, rng: np.random.Generator) -> dict[str, dict[str, np.ndarray]]:
    """``n`` rows of the metacarpals ``names``: per bone its tip (mm, against the row's joint), log shaft and
    log head cross-section (mm², the ellipses' areas)."""
    scale = rng.uniform(*DRAWS["scale"], n)
    out = {}
    for name in names:
        s = scale * rng.uniform(*DRAWS["rel"][name], n)
        area = {}
        for part in ("shaft", "head"):
            (a, b), (fa, fb) = DRAWS[part + "_mm"], DRAWS[part]
            area[part] = np.log(np.pi * (a * s * rng.uniform(*fa, n)) * (b * s * rng.uniform(*fb, n)))
        out[name] = {"tip": rng.uniform(*DRAWS["dz"][name], n), **area}
    return out


def bayes_rate(x: np.ndarray, mirrored: np.ndarray, bins: int) -> float:
    """Share of rows named right by the rule that picks the reading (``x``, MC2 at its first end, or
    ``mirrored``, the same row read from the other end) more frequent in its bin; ties count half. The bins
    are counted on the first half of the rows and the rule is scored on the second (scored on the rows that
    made it, a fine binning learns their noise and reads high)."""
    lo = np.minimum(x.min(axis=0), mirrored.min(axis=0))
    hi = np.maximum(x.max(axis=0), mirrored.max(axis=0))

    def cell(v: np.ndarray) -> tuple:
        return tuple(np.clip(((v - lo) / (hi - lo) * bins).astype(int), 0, bins - 1).T)

    half = len(x) // 2
    counts = np.zeros((bins,) * x.shape[1])
    np.add.at(counts, cell(x[:half]), 1)
    p, q = counts[cell(x[half:])], counts[cell(mirrored[half:])]
    return float(((p > q) + 0.5 * (p == q)).mean())


def rates(n: int, seed: int = 0) -> dict:
    """The Bayes rates of rows of two and three, without and with every sesamoid found. Two: the ends'
    differences in tip, log head and log shaft area; three: each end's tip and size (the mean of its log head
    and log shaft area) against the middle bone's."""
    rng = np.random.default_rng(seed)
    two = draw_rows(["MC2", "MC3"], n, rng)
    a, b = two["MC2"], two["MC3"]
    x2 = np.stack([a[k] - b[k] for k in ("tip", "head", "shaft")], axis=1)
    three = draw_rows(["MC2", "MC3", "MC4"], n, rng)
    a, m, b = three["MC2"], three["MC3"], three["MC4"]

    def size(e: dict) -> np.ndarray:
        return (e["head"] + e["shaft"]) / 2

    x3 = np.stack([a["tip"] - m["tip"], b["tip"] - m["tip"], size(a) - size(m), size(b) - size(m)], axis=1)
    r2 = bayes_rate(x2, -x2, 30)
    r3 = bayes_rate(x3, x3[:, [1, 0, 3, 2]], 20)
    found = DRAWS["sesamoid"]
    return {
        "rows": n,
        "two": round(r2, 3),
        "two_with_sesamoid": round(found + (1 - found) * r2, 3),
        "three": round(r3, 3),
        "three_with_sesamoid": round(found + (1 - found) * r3, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=3_000_000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(json.dumps(rates(a.rows, a.seed)))


if __name__ == "__main__":
    main()
