"""Pin Dockerfile.trt's base images to digests: ``ARG TRT_IMAGE=TAG`` becomes ``ARG TRT_IMAGE=TAG@sha256:...``.

Run it on a machine that reaches the registries (the workstation), after testing a new base tag:

    .venv/bin/python scripts/pin_base_images.py            # resolve with `docker buildx imagetools inspect`
    .venv/bin/python scripts/pin_base_images.py --check    # exit 1 while a base is pinned by tag only

The tag stays in the line, so a reader sees which release the digest is; re-running re-resolves the tag.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parent.parent / "Dockerfile.trt"
ARGS = ("TRT_IMAGE", "PYTHON_IMAGE")
LINE = re.compile(
    r"^ARG (?P<arg>TRT_IMAGE|PYTHON_IMAGE)=(?P<tag>[^@\s]+)(?:@(?P<digest>sha256:[0-9a-f]{64}))?\s*$", re.M
)


def resolve(tag: str) -> str:
    """The manifest-list digest of ``tag`` (``sha256:...``), as the registry reports it now."""
    out = subprocess.run(
        ["docker", "buildx", "imagetools", "inspect", tag, "--format", "{{json .Manifest.Digest}}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    digest = out.strip().strip('"')
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise SystemExit(f"{tag}: unexpected digest {digest!r}")
    return digest


def pin(text: str, lookup=resolve) -> str:
    """``text`` with every base ARG set to ``TAG@DIGEST`` (digests from ``lookup(tag)``)."""

    def sub(m: re.Match) -> str:
        return f"ARG {m['arg']}={m['tag']}@{lookup(m['tag'])}"

    return LINE.sub(sub, text)


def unpinned(text: str) -> list[str]:
    return [m["tag"] for m in LINE.finditer(text) if not m["digest"]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only report tags without a digest (exit 1 if any)")
    a = ap.parse_args()
    text = DOCKERFILE.read_text()
    if a.check:
        left = unpinned(text)
        for t in left:
            print(f"{DOCKERFILE.name}: {t} is pinned by tag only", file=sys.stderr)
        return 1 if left else 0
    DOCKERFILE.write_text(pin(text))
    print("\n".join(m.group(0) for m in LINE.finditer(DOCKERFILE.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
