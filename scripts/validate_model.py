"""Native-resolution validation of an exported model on held-out phantoms, through `vbmd-rt run`'s path.

    python scripts/validate_model.py [--model DIR] --data DIR [--small 24 --full 8 --seed 9000] -o validation.json

Generates the phantoms when DATA is empty (seed 9000 never appears in training), then segments each
with the ONNX Runtime backend exactly as `vbmd-rt run` does and compares with the true mask.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", required=True)
    ap.add_argument("--small", type=int, default=24)
    ap.add_argument("--full", type=int, default=8)
    ap.add_argument("--seed", type=int, default=9000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("-o", "--out", required=True)
    a = ap.parse_args()
    data = Path(a.data)
    from vbmd_rt.synth import phantom

    if not any(data.glob("*.AIM")):  # the same cases as train_default_model.py's validation set
        phantom.synth(data, a.full, a.seed, "full", workers=a.workers)
        phantom.synth(data, a.small, a.seed, "small", start=a.full, workers=a.workers)
    from vbmd_rt.evaluation.evaluate import evaluate
    from vbmd_rt.runtime.inference import factory as backends
    from vbmd_rt.runtime.io import dataset
    from vbmd_rt.runtime.model import load_model

    model = load_model(a.model)
    backend = backends.create("onnxruntime", model, "cpu")
    t0 = time.time()
    report = evaluate(dataset.discover(data), model, backend, log=lambda s: print(s, flush=True))
    report["seconds"] = time.time() - t0
    report["backend"] = backend.name
    report["held_out"] = f"vbmd-rt synth seed {a.seed}: {a.full} full (82 um) + {a.small} small (246 um) cases"
    Path(a.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report["summary"], indent=1))


if __name__ == "__main__":
    main()
