"""Native-resolution validation of an exported model on held-out phantoms, through `vbmd-rt run`'s path.

    python scripts/validate_model.py [--model DIR] --data DIR [--small 24 --full 8 --seed 9000] -o validation.json

Generates the phantoms when DATA is empty (seed 9000 never appears in training), then segments each
with the ONNX Runtime backend exactly as `vbmd-rt run` does and compares with the true mask.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from train_default_model import _one


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
    if not any(data.glob("*.AIM")):
        data.mkdir(parents=True, exist_ok=True)
        jobs = [(data, i, a.seed, "full") for i in range(a.full)]
        jobs += [(data, a.full + i, a.seed, "small") for i in range(a.small)]
        with ProcessPoolExecutor(a.workers) as pool:
            list(pool.map(_one, jobs))
    from vbmd_rt.export import data as dataset
    from vbmd_rt.export.evaluate import evaluate
    from vbmd_rt.runtime import backends
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
