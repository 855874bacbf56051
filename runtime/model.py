"""Model cards (``model.json``), the table of architecture defaults, and where the bundled model lives.

An exported model is a folder holding ``model.json`` beside its ONNX files. :class:`ModelCard` is the one
typed reader and writer of that file (``vbmd-rt export`` writes it with :meth:`ModelCard.write`, the
runtime reads it with :meth:`ModelCard.read`): what the runtime needs (architecture, preprocessing,
threshold, window, input tensor) and what a reader needs (training data, validation metrics, intended use).
Each ONNX file is listed with its sha256, which the runtime checks before loading. Cards hold no machine
paths: training data is named by its folder's name only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

from vbmd_rt.runtime.errors import VbmdInputError
from vbmd_rt.runtime.inference.window import WindowSpec
from vbmd_rt.runtime.io.atomic import atomic_write_bytes
from vbmd_rt.runtime.preprocess import Spec

CARD_NAME = "model.json"
CARD_FORMAT = 2
CLASSICAL = "classical"


class ModelError(VbmdInputError):
    """The model folder or card is missing, incomplete or does not match its files."""


@dataclass(frozen=True)
class Architecture:
    """Per-architecture defaults: the one place they are written (runtime, training, export, engines)."""

    name: str
    window_mode: str  # "volume": the net sees (1, 1, z, y, x) windows; "slices": (b, 1, y, x) batches
    window: int  # slices per network call: the 3D window, the 2D batch
    overlap: int  # slices shared by neighbouring 3D windows
    multiple: int  # input y/x (and 3D z) sizes are multiples of this (the nets' downsampling)
    z_mode: str  # preprocess.Spec.z_mode
    crop: bool  # whether the hand's box is cut out (the 2D net takes whole 512 x 512 slices)
    profile_batches: tuple[int, int, int]  # TensorRT optimisation profile (min, opt, max) of the batch axis
    channels: int = 1  # input channels
    input_px: int | None = None  # fixed in-plane input size (the MC2 window); None: the card's size / the hand box
    bone_window: bool = False  # sees the MC2-centred window of runtime.bonewin (after runtime.identify)


ARCHITECTURES: dict[str, Architecture] = {
    "unet3d": Architecture("unet3d", "volume", 80, 16, 16, "isotropic", True, (1, 1, 1)),
    "unet2d": Architecture("unet2d", "slices", 16, 0, 32, "native", False, (1, 16, 32)),
    # The one-bone segmenter: 2D, five context slices and the identified region as channels, 160 x 160.
    "bonewin2d": Architecture("bonewin2d", "slices", 32, 0, 16, "isotropic", True, (1, 32, 64), 6, 160, True),
}


def architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r} (known: {', '.join(ARCHITECTURES)})")
    return ARCHITECTURES[name]


@dataclass(frozen=True)
class TensorSpec:
    """A network input or output: name, dtype and shape (ints, or names of dynamic axes)."""

    name: str = "image"
    dtype: str = "float32"
    shape: tuple = ()
    meaning: str = ""

    def to_dict(self) -> dict:
        d = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        return {**d, "meaning": self.meaning} if self.meaning else d


def _tensor(d: dict, default_name: str) -> TensorSpec:
    return TensorSpec(
        d.get("name", default_name), d.get("dtype", "float32"), tuple(d.get("shape", ())), d.get("meaning", "")
    )


@dataclass(frozen=True)
class ModelFile:
    path: str
    sha256: str | None = None
    bytes: int | None = None


def _no_machine_paths(value):
    """Training-data entries name folders by their last part: a card travels between machines."""
    if isinstance(value, str) and (value.startswith("/") or (len(value) > 2 and value[1] == ":")):
        return PurePath(value).name
    if isinstance(value, dict):
        return {k: _no_machine_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_machine_paths(v) for v in value]
    return value


@dataclass
class ModelCard:
    """The typed content of ``model.json``."""

    architecture: str
    preprocessing: Spec = field(default_factory=Spec)
    files: dict[str, ModelFile] = field(default_factory=dict)
    name: str | None = None
    threshold: float = 0.5
    window_slices: int | None = None  # None: the architecture's default
    window_overlap: int | None = None
    config: dict | None = None  # the network's constructor arguments
    input: TensorSpec = field(default_factory=TensorSpec)
    output: TensorSpec = field(default_factory=lambda: TensorSpec("prob"))
    parameters: int | None = None
    description: str = ""
    intended_use: str = ""
    training: dict = field(default_factory=dict)  # what the training run recorded (config, history, cases)
    training_data: dict = field(default_factory=dict)  # for readers: what the data was, the recipe, hardware
    validation: dict = field(default_factory=dict)
    export_checks: dict = field(default_factory=dict)
    exported_with: dict = field(default_factory=dict)
    format: int = CARD_FORMAT

    @property
    def classical(self) -> bool:
        return self.architecture == CLASSICAL

    @property
    def arch(self) -> Architecture:
        return architecture(self.architecture)

    @property
    def window(self) -> WindowSpec:
        a = self.arch
        slices = self.window_slices if self.window_slices is not None else a.window
        overlap = self.window_overlap if self.window_overlap is not None else a.overlap
        return WindowSpec(a.window_mode, int(slices), int(overlap), self.preprocessing.multiple)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        d: dict[str, Any] = {"format": self.format, "name": self.name, "architecture": self.architecture}
        if not self.classical:
            d["preprocessing"] = self.preprocessing.to_dict()
            d["threshold"] = self.threshold
            w = self.window
            d["window"] = {"slices": w.roi_slices, "overlap": w.overlap}
            d["input"] = self.input.to_dict()
            d["output"] = self.output.to_dict()
        for key in (
            "config",
            "parameters",
            "description",
            "intended_use",
            "training",
            "training_data",
            "validation",
            "export_checks",
            "exported_with",
        ):
            value = getattr(self, key)
            if value not in (None, "", {}):
                d[key] = _no_machine_paths(value) if key == "training" else value
        if self.files:
            d["files"] = {
                k: {kk: vv for kk, vv in dataclasses.asdict(f).items() if vv is not None} for k, f in self.files.items()
            }
        return d

    @classmethod
    def from_dict(cls, d: dict, where: Path | None = None) -> ModelCard:
        where = where or Path(CARD_NAME)
        for key in ("architecture",) if d.get("architecture") == CLASSICAL else ("architecture", "preprocessing"):
            if key not in d:
                raise ModelError(where, f"model card has no {key!r}", "re-export the model with `vbmd-rt export`")
        arch = str(d["architecture"])
        if arch != CLASSICAL and arch not in ARCHITECTURES:
            raise ModelError(
                where,
                f"model card names an unknown architecture {arch!r}",
                f"use a card for one of {', '.join(ARCHITECTURES)}",
            )
        window = d.get("window") or {}
        try:
            files = {
                k: ModelFile(str(v["path"]), v.get("sha256"), v.get("bytes")) for k, v in d.get("files", {}).items()
            }
            card = cls(
                architecture=arch,
                preprocessing=Spec.from_dict(d.get("preprocessing", {})),
                files=files,
                name=d.get("name"),
                threshold=float(d.get("threshold", 0.5)),
                window_slices=window.get("slices"),
                window_overlap=window.get("overlap"),
                config=d.get("config"),
                input=_tensor(d.get("input", {}), "image"),
                output=_tensor(d.get("output", {}), "prob"),
                parameters=d.get("parameters"),
                description=d.get("description", ""),
                intended_use=d.get("intended_use", ""),
                training=d.get("training", {}),
                training_data=d.get("training_data", {}),
                validation=d.get("validation", {}),
                export_checks=d.get("export_checks", {}),
                exported_with=d.get("exported_with", {}),
                format=int(d.get("format", CARD_FORMAT)),
            )
            card.check_window()
            return card
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise ModelError(
                where, f"model card is malformed ({type(e).__name__}: {e})", "re-export the model with `vbmd-rt export`"
            ) from None

    def check_window(self) -> None:
        """Raise ValueError where the network cannot take the card's windows: a 3D window that is no multiple of
        ``preprocessing.multiple`` (``WindowSpec``), or a multiple that is none of the net's downsampling, 2 **
        (levels - 1) for the card's ``widths``."""
        if self.classical:
            return
        self.window  # noqa: B018 - WindowSpec checks the window as it is made
        widths = (self.config or {}).get("widths") if self.arch.window_mode == "volume" else None
        if widths and self.preprocessing.multiple % 2 ** (len(widths) - 1):
            raise ValueError(
                f"a {len(widths)}-level net needs sizes in multiples of {2 ** (len(widths) - 1)}, the card"
                f" gives {self.preprocessing.multiple}"
            )

    @classmethod
    def read(cls, path: str | Path) -> ModelCard:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelError(
                path,
                f"model card is not valid JSON ({e.__class__.__name__})",
                "re-export the model with `vbmd-rt export`",
            ) from None
        if not isinstance(d, dict):
            raise ModelError(path, "model card is not a JSON object", "re-export the model with `vbmd-rt export`")
        return cls.from_dict(d, path)

    def write(self, path: str | Path) -> None:
        atomic_write_bytes(path, (json.dumps(self.to_dict(), indent=2) + "\n").encode(), overwrite=True)


CLASSICAL_CARD = ModelCard(
    architecture=CLASSICAL,
    name=CLASSICAL,
    description="dual-threshold periosteal contouring on the calibrated image (no weights)",
    intended_use="baseline for comparisons and fallback; needs a density-calibrated scan",
)


def default_model_dir() -> Path:
    """The bundled model: ``vbmd_rt/models/default`` in the installed package."""
    import vbmd_rt

    return Path(vbmd_rt.__file__).resolve().parent / "models" / "default"


def bundled_models() -> list[str]:
    """Names of the models inside the package: ``default`` (the one-bone segmenter) and ``unet3d`` (the
    paper's 3D U-Net, trained on standard phantoms; kept for comparisons and engine benchmarks)."""
    root = default_model_dir().parent
    return sorted(p.name for p in root.iterdir() if (p / CARD_NAME).is_file()) if root.is_dir() else []


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Model:
    """A model card and the folder its files are in."""

    card: ModelCard
    folder: Path

    @property
    def name(self) -> str:
        return str(self.card.name or self.folder.name)

    @property
    def architecture(self) -> str:
        return self.card.architecture

    @property
    def classical(self) -> bool:
        return self.card.classical

    @property
    def spec(self) -> Spec:
        return self.card.preprocessing

    @property
    def threshold(self) -> float:
        return self.card.threshold

    @property
    def window(self) -> WindowSpec:
        return self.card.window

    def onnx(self, precision: str = "fp32", verify: bool = True) -> Path:
        """Path of the ONNX file for ``precision`` (fp32 or fp16), its sha256 checked against the card."""
        files = self.card.files
        if precision not in files:
            raise ModelError(
                self.folder / CARD_NAME,
                f"the model card lists no {precision} ONNX file",
                f"choose one of {', '.join(sorted(files)) or 'none'} or re-export the model",
            )
        entry = files[precision]
        path = self.folder / entry.path
        if not path.is_file():
            raise ModelError(path, "model file is missing", "re-export the model with `vbmd-rt export`")
        if verify and entry.sha256 and sha256_of(path) != entry.sha256:
            raise ModelError(path, "sha256 does not match the model card", "re-export the model with `vbmd-rt export`")
        return path

    def sha256(self, precision: str = "fp32") -> str | None:
        f = self.card.files.get(precision)
        return f.sha256 if f else None


def load_model(where: str | Path | None = None) -> Model:
    """Load a model card from a folder, a ``model.json`` path, the bundled default (``None``), or the
    weightless classical baseline (``"classical"``)."""
    if where is not None and str(where) == CLASSICAL and not Path(where).exists():
        return Model(CLASSICAL_CARD, Path("."))
    if where is not None and not Path(where).exists() and str(where) in bundled_models():
        where = default_model_dir().parent / str(where)  # a bundled model by name, e.g. "unet3d"
    path = Path(where) if where is not None else default_model_dir()
    card_path = path / CARD_NAME if path.is_dir() else path
    if not card_path.is_file():
        if where is None:
            raise ModelError(
                card_path,
                "the bundled default model is missing from this installation",
                "reinstall vbmd-rt, or pass --model FOLDER",
            )
        raise ModelError(card_path, "no model card here", "pass the folder that `vbmd-rt export` wrote")
    card = ModelCard.read(card_path)
    if not card.classical and not card.files:
        raise ModelError(card_path, "model card lists no ONNX files", "re-export the model with `vbmd-rt export`")
    return Model(card, card_path.parent)
