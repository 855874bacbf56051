"""Model cards (``model.json``) and where the bundled default model lives.

An exported model is a folder (or a card's path) holding ``model.json`` beside its ONNX files. The card
says what the runtime needs (architecture, input layout, preprocessing, threshold, window) and what a
reader needs (training data, validation metrics, intended use); each ONNX file is listed with its sha256,
which the runtime checks before loading.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from vbmd_rt.runtime.errors import VbmdInputError
from vbmd_rt.runtime.preprocess import Spec

CARD_NAME = "model.json"
CARD_FORMAT = 1


class ModelError(VbmdInputError):
    """The model folder or card is missing, incomplete or does not match its files."""


def default_model_dir() -> Path:
    """The bundled model: ``vbmd_rt/models/default`` in the installed package."""
    import vbmd_rt

    return Path(vbmd_rt.__file__).resolve().parent / "models" / "default"


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Model:
    """A loaded model card and the folder its files are in."""

    card: dict
    folder: Path

    @property
    def name(self) -> str:
        return str(self.card.get("name", self.folder.name))

    @property
    def architecture(self) -> str:
        return str(self.card["architecture"])

    @property
    def classical(self) -> bool:
        return self.architecture == CLASSICAL

    @property
    def spec(self) -> Spec:
        return Spec.from_card(self.card)

    @property
    def threshold(self) -> float:
        return float(self.card.get("threshold", 0.5))

    @property
    def window(self) -> int:
        """Slices per network call: the 3D net's window, the 2D net's batch."""
        return int(self.card.get("window", {}).get("slices", 80 if self.architecture == "unet3d" else 16))

    @property
    def overlap(self) -> int:
        return int(self.card.get("window", {}).get("overlap", 16))

    def onnx(self, precision: str = "fp32", verify: bool = True) -> Path:
        """Path of the ONNX file for ``precision`` (fp32 or fp16), its sha256 checked against the card."""
        files = self.card.get("files", {})
        if precision not in files:
            raise ModelError(self.folder / CARD_NAME, f"the model card lists no {precision} ONNX file",
                             f"choose one of {', '.join(sorted(files)) or 'none'} or re-export the model")
        entry = files[precision]
        path = self.folder / entry["path"]
        if not path.is_file():
            raise ModelError(path, "model file is missing", "re-export the model with `vbmd-rt export`")
        if verify and entry.get("sha256") and sha256_of(path) != entry["sha256"]:
            raise ModelError(path, "sha256 does not match the model card", "re-export the model with `vbmd-rt export`")
        return path

    def sha256(self, precision: str = "fp32") -> str | None:
        return self.card.get("files", {}).get(precision, {}).get("sha256")


CLASSICAL = "classical"


def load_model(where: str | Path | None = None) -> Model:
    """Load a model card from a folder, a ``model.json`` path, the bundled default (``None``), or the
    weightless classical baseline (``"classical"``)."""
    if where is not None and str(where) == CLASSICAL and not Path(where).exists():
        from vbmd_rt.runtime.classical import CARD

        return Model(dict(CARD), Path("."))
    path = Path(where) if where is not None else default_model_dir()
    card_path = path / CARD_NAME if path.is_dir() else path
    if not card_path.is_file():
        if where is None:
            raise ModelError(card_path, "the bundled default model is missing from this installation",
                             "reinstall vbmd-rt, or pass --model FOLDER")
        raise ModelError(card_path, "no model card here", "pass the folder that `vbmd-rt export` wrote")
    try:
        card = json.loads(card_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(card_path, f"model card is not valid JSON ({e.__class__.__name__})",
                         "re-export the model with `vbmd-rt export`") from None
    for key in ("architecture", "preprocessing", "files"):
        if key not in card:
            raise ModelError(card_path, f"model card has no {key!r}", "re-export the model with `vbmd-rt export`")
    return Model(card, card_path.parent)
