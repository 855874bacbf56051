"""How the identification stage reads which way a stack runs (``runtime.direction``), on scans as written and
on the same scans with their slices reversed in memory.

    python -m vbmd_rt.bench.stack_direction FOLDER... [--written-reversed NAME ...] [-o OUT.json]

For every scan in the folders (``*.AIM`` but the ``_GT`` truth masks), ``identify.identify`` runs twice:
on the scan as written and on the scan with its slices in the other order. A scan is taken to be written
shafts first, except those named with ``--written-reversed`` (e.g. the independent generator's ALIEN_16 and
ALIEN_17). Each reading is one of:

* ``as written``: used as it is, no doubt raised;
* ``turned``: found to run the other way and turned end to end;
* ``review``: used as it is, with the identity's reason that the slices may run the other way;
* ``refused``: not a hand scan (``NotAHand``).

A stack that runs fingers first is read right when ``turned``, is left to a reader when ``review``, and is
``missed`` when taken ``as written``; one that runs shafts first should be ``as written``. The table per
folder (and over all) is printed, and with ``-o`` written as JSON with every scan's ``identity.stack``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np


def reading(data: np.ndarray, spacing_zyx, calibration) -> dict:
    """``identify.identify`` on one scan's voxels: its ``stack`` record, or ``{"refused": reason}``."""
    from vbmd_rt.runtime import bonewin, identify

    vol, _ = bonewin.model_volume(data, spacing_zyx, calibration)
    try:
        return identify.identify(vol, float(bonewin.GRID.spacing_mm)).stack.to_dict()
    except identify.NotAHand as e:
        return {"refused": str(e)}


def outcome(stack: dict, shafts_first: bool) -> str:
    """``as written``, ``turned``, ``review``, ``missed`` (a stack running fingers first taken as written),
    ``turned wrongly`` (one running shafts first turned) or ``refused``."""
    if "refused" in stack:
        return "refused"
    if stack["turned"]:
        return "turned wrongly" if shafts_first else "turned"
    if "review_reason" in stack:
        return "review"
    return "as written" if shafts_first else "missed"


def scans(folders) -> list[Path]:
    """The scans of ``folders`` (``*.AIM``, the ``_GT`` truth masks left out), in name order."""
    out: list[Path] = []
    for f in folders:
        out.extend(p for p in sorted(Path(f).glob("*.AIM")) if not p.stem.endswith("_GT"))
    return out


def measure(folders, written_reversed=(), log=print) -> dict:
    """Every scan of ``folders`` read as written and reversed: per scan the two ``stack`` records and
    outcomes, and a tally per folder of the stacks running shafts first and of those running fingers first."""
    from vbmd_rt.runtime.io import aim

    rows = []
    for path in scans(folders):
        s = aim.read_aim(path)
        shafts_first = path.stem not in set(written_reversed)
        data = np.asarray(s.data)
        row = {"folder": path.parent.name, "scan": path.name}
        for key, voxels, forward in (
            ("written", data, shafts_first),
            ("reversed", data[::-1], not shafts_first),
        ):
            stack = reading(voxels, s.spacing_zyx, s.calibration)
            row[key] = {"stack": stack, "shafts_first": forward, "outcome": outcome(stack, forward)}
        rows.append(row)
        log(
            f"{row['folder']}/{row['scan']}: as written {row['written']['outcome']}, reversed {row['reversed']['outcome']}"
        )
    tally: dict[str, dict[str, Counter]] = {}
    for row in rows:
        for folder in (row["folder"], "(all folders)"):
            t = tally.setdefault(folder, {"shafts first": Counter(), "fingers first": Counter()})
            for key in ("written", "reversed"):
                r = row[key]
                t["shafts first" if r["shafts_first"] else "fingers first"][r["outcome"]] += 1
    return {"scans": rows, "tally": {f: {k: dict(c) for k, c in t.items()} for f, t in tally.items()}}


def table(tally: dict) -> str:
    """The tally as a text table: per folder, the stacks running shafts first and fingers first."""
    cols = ["as written", "turned", "review", "missed", "turned wrongly", "refused"]
    lines = ["folder | runs | n | " + " | ".join(cols)]
    for folder, t in tally.items():
        for runs in ("shafts first", "fingers first"):
            c = t[runs]
            lines.append(f"{folder} | {runs} | {sum(c.values())} | " + " | ".join(str(c.get(k, 0)) for k in cols))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folders", nargs="+", help="folders of AIM scans (their _GT masks are left out)")
    ap.add_argument(
        "--written-reversed",
        nargs="*",
        default=[],
        metavar="NAME",
        help="scans (file names without .AIM) written fingers first, e.g. ALIEN_16 ALIEN_17",
    )
    ap.add_argument("-o", "--out", help="write every scan's readings and the tally as JSON here")
    a = ap.parse_args(argv)
    result = measure(a.folders, a.written_reversed)
    print(table(result["tally"]))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
