import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = Path(os.environ.get("VBMD_RT_SAMPLES", ROOT.parent / "shared" / "aim-samples"))


def _reference() -> dict:
    ref = SAMPLES / "reference.json"
    return json.loads(ref.read_text()) if ref.exists() else {}


REFERENCE = _reference()
needs_samples = pytest.mark.skipif(not REFERENCE, reason=f"sample AIM files not found in {SAMPLES}")


@pytest.fixture
def samples() -> Path:
    if not REFERENCE:
        pytest.skip(f"sample AIM files not found in {SAMPLES}")
    return SAMPLES
