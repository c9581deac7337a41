"""The engine options of a batch, resolved once on the client and hashed for resume.

`--engine auto` becomes the engine it means (nnU-Net when --model is given or a default model is installed),
and a model name becomes its folder, so every worker loads the same model and a bad model is refused (exit 2)
before any scan is submitted. What counts for resume is `key(slices)`: the resolved engine, the model's
identity (its folder and the size and modification time of plans.json, dataset.json and each checkpoint), the
device, folds, test-time augmentation, checkpoint, precision, the scan's slice range or --auto-range, and
--dicom. --batch-size, the number of workers and where they run do not change results and are not part of it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..engines import make_engine


@dataclass(frozen=True)
class BatchSettings:
    engine: str  # "threshold" or "nnunet" (never "auto")
    model: str | None = None  # model folder (absolute) for nnU-Net
    model_name: str | None = None
    model_round: int | None = None
    model_identity: str | None = None
    device: str = "auto"
    folds: tuple[int, ...] | None = None
    tta: bool | None = None
    batch_size: int | None = None
    slices: str | None = None  # applies to scans without their own (manifest) range
    auto_range: bool = False
    dicom: bool = False  # seg.dcm and sr.dcm for the DICOM scans
    checkpoint: str | None = None  # nnU-Net: "best", "final", None (the model folder's default)
    precision: str | None = None  # nnU-Net: "fp32", "bf16", None (fp32 unless $LEGSEGNET_NNUNET_PRECISION)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> BatchSettings:
        data = dict(data)
        if data.get("folds") is not None:
            data["folds"] = tuple(data["folds"])
        return cls(**data)

    def scan_range(self, scan_slices: str | None) -> tuple[str | None, bool]:
        """(slices, auto_range) for one scan: its own FIRST:LAST wins over --slices and --auto-range."""
        if scan_slices:
            return scan_slices, False
        return self.slices, self.auto_range and self.slices is None

    def key(self, scan_slices: str | None) -> str:
        """What a finished scan must have been made with to be skipped on resume."""
        slices, auto = self.scan_range(scan_slices)
        relevant = {
            "engine": self.engine,
            "model": self.model,
            "model_identity": self.model_identity,
            "device": self.device,
            "folds": list(self.folds) if self.folds is not None else None,
            "tta": self.tta,
            "slices": slices,
            "auto_range": auto,
        }
        # only when given: batches run before these options existed keep their keys
        optional = {"dicom": self.dicom or None, "checkpoint": self.checkpoint, "precision": self.precision}
        relevant.update({name: value for name, value in optional.items() if value is not None})
        text = json.dumps(relevant, sort_keys=True)
        return "v1:" + hashlib.sha256(text.encode()).hexdigest()[:32]

    def engine_key(self) -> tuple:
        """What a worker's cached engine must match to be reused."""
        return (
            self.engine,
            self.model,
            self.model_identity,
            self.device,
            self.folds,
            self.tta,
            self.batch_size,
            self.checkpoint,
            self.precision,
        )

    def make_engine(self, progress=None):
        return make_engine(
            self.engine,
            model=self.model,
            device=self.device,
            folds=list(self.folds) if self.folds else None,
            tta=self.tta,
            batch_size=self.batch_size,
            checkpoint=self.checkpoint,
            precision=self.precision,
            # one scan per worker and a worker per core: the threshold engine's look-ahead threads would only
            # make the workers take cores from each other
            threads=1,
            progress=progress,
        )


def resolve(
    engine: str,
    model: str | None,
    device: str,
    folds,
    tta,
    batch_size,
    slices,
    auto_range,
    dicom: bool = False,
    checkpoint: str | None = None,
    precision: str | None = None,
) -> BatchSettings:
    """The batch's settings with `auto` and the model resolved; InputError (exit 2) for a bad model or, with
    `dicom`, when highdicom is missing."""
    from ..core.errors import InputError
    from ..core.progress import Progress
    from ..engines import _installed_model_available

    if slices is not None and auto_range:
        raise InputError("give either --slices FIRST:LAST or --auto-range, not both")
    if dicom:
        from ..measurement.dicom_results import require_highdicom

        require_highdicom()
    if engine == "auto":
        engine = "nnunet" if model or _installed_model_available(None, Progress()) else "threshold"
    if engine == "threshold":
        return BatchSettings(engine="threshold", device=device, slices=slices, auto_range=auto_range, dicom=dicom)
    from ..models.store import resolve_model

    folder = resolve_model(model)
    folder.checkpoints(folds, checkpoint)  # refuse folds or checkpoints the model lacks now, not once per scan
    return BatchSettings(
        engine="nnunet",
        model=str(Path(folder.path).absolute()),
        model_name=folder.name,
        model_round=folder.metadata.get("round"),
        model_identity=_model_identity(Path(folder.path)),
        device=device,
        folds=tuple(folds) if folds is not None else None,
        tta=tta,
        batch_size=batch_size,
        slices=slices,
        auto_range=auto_range,
        dicom=dicom,
        checkpoint=checkpoint,
        precision=precision,
    )


def _model_identity(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted([*folder.glob("*.json"), *folder.rglob("*.pth")]):
        info = path.stat()
        digest.update(f"{path.relative_to(folder).as_posix()}:{info.st_size}:{info.st_mtime_ns}\0".encode())
    return digest.hexdigest()[:16]
