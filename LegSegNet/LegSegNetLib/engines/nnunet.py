"""The nnU-Net engine: a 2D nnU-Net v2 model (the published LegSegNet weights or a retrained one).

One slab in, labels out in the slab's own grid. The slab comes in the standard in-plane orientation
(scan/orientation.py: the pipeline turns every scan to it, whatever its storage order, and turns the labels
back), and is handed to the model in the axis order the model was trained in (slice_axes.py). Five steps
per chunk of slices:

1. Network input. PNG-format models (the published weights): the standard slices as they are (the
   reference code's vol[z] of a scan stored LPS), then the published preprocessing, bit for bit
   (published_preprocessing.py: HU window, truncating cast, OpenCV bicubic 256 x 256), then nnU-Net's own
   preprocessor with spacing (999, 1, 1). HU-format models: the standard slices transposed, with their
   spacing as (slice, row, column) of the transposed slice: exactly the array and spacing nnU-Net's own
   SimpleITK reader makes of the scan stored LPS; then nnU-Net's own preprocessor (the plans' transpose,
   crop, normalisation and resampling).
2. Sliding window exactly as nnU-Net's predictor does it (padding, tile positions, Gaussian weights,
   optional mirroring, half-precision accumulation), but with the tiles of many slices in one batch. The
   network runs on PyTorch, or on the CPU on OpenVINO when installed (openvino_network.py: same numbers to
   float rounding, faster); bfloat16 only when asked for (`precision`).
3. Folds: each fold's logits go through nnU-Net's own export (resampling back to the crop, softmax,
   crop reverted with background 1 outside); the folds' probabilities are averaged.
4. Back to the scan: probabilities go back to the standard slab's axis order, then PNG-format
   probabilities are interpolated (bilinear, half-pixel centres) from the 256 x 256 grid to the slice's own
   rows and columns, then the argmax is taken; HU-format models are already on the native grid after step 3.
5. Slices without body (every voxel below -500 HU) are not sent to the network: label 0.

Checkpoints are loaded with torch.load(weights_only=True) (models.checkpoints.load_checkpoint) and the plans'
imported names are checked against what nnU-Net ships (models.folder.load_plans): a model file cannot run code. Memory is bounded by the chunk size; nothing of a whole scan but its labels is kept.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..core.errors import InputError
from ..core.progress import Progress
from ..core.text import first_line
from ..models.checkpoints import import_torch_for_nnunet as _import_torch
from ..models.folder import CONFIGURATION
from . import published_preprocessing as published
from . import slice_axes, uncertainty

if TYPE_CHECKING:
    from ..models.folder import ModelFolder
    from ..models.store import ModelStore

BODY_HU = -500.0  # a slice with no voxel above this holds no body: label 0 without the network
DEFAULT_CPU_BATCH = 8  # slices per chunk on the CPU (their tiles are shared out to the cores)
DEFAULT_GPU_BATCH = 32  # slices per chunk, all their tiles in one forward pass
# what runs the network: auto = OpenVINO on the CPU when it is installed (engines/openvino_network.py), else
# PyTorch; torch = PyTorch's own kernels (the fallback); openvino; compile = torch.compile (CUDA graphs on a GPU)
RUNTIMES = ("auto", "torch", "openvino", "compile")
# fp32: the reference code's numbers; bf16 (CPU only, asked for explicitly): faster on CPUs with AVX-512 BF16 or
# AMX, labels may differ from fp32 on a few voxels; recorded in metrics.json either way
PRECISIONS = ("fp32", "bf16")
RUNTIME_ENV = "LEGSEGNET_NNUNET_RUNTIME"
PRECISION_ENV = "LEGSEGNET_NNUNET_PRECISION"


def select_device(requested: str, progress: Progress | None = None):
    """The torch device for `requested` ('auto', 'cpu', 'cuda', 'mps'); auto tries CUDA, then MPS, then CPU."""
    from .devices import probe

    torch = _import_torch()
    requested = (requested or "auto").lower()
    found = probe(torch)
    has_cuda, has_mps = found["cuda"] is not None, found["mps"]
    if requested == "auto":
        if has_cuda:
            return torch.device("cuda", 0)
        if has_mps:
            return torch.device("mps")
        if progress is not None:
            progress.note("no GPU found (neither CUDA nor Apple MPS): running nnU-Net on the CPU, which is slower")
        return torch.device("cpu")
    if requested == "cuda":
        if not has_cuda:
            build = (
                "without CUDA support"
                if torch.version.cuda is None
                else f"with CUDA {torch.version.cuda}, but no GPU is visible"
            )
            raise InputError(
                f"--device cuda: PyTorch {torch.__version__} is built {build}; use --device auto or --device cpu"
            )
        return torch.device("cuda", 0)
    if requested == "mps":
        if not has_mps:
            raise InputError(
                "--device mps: Apple's Metal (MPS) backend is not available here; use --device auto or --device cpu"
            )
        return torch.device("mps")
    if requested == "cpu":
        return torch.device("cpu")
    raise InputError(f"unknown device '{requested}'; choose auto, cpu, cuda or mps")


CPU_THREADS_ENV = "LEGSEGNET_CPU_THREADS"  # set by `legsegnet batch` so its workers share the cores


def cpu_threads() -> int:
    """Cores this process may run on (a container's or taskset's limit, not the machine's count), or
    $LEGSEGNET_CPU_THREADS when set (several batch workers on one machine split the cores)."""
    try:
        return max(1, int(os.environ[CPU_THREADS_ENV]))
    except (KeyError, ValueError):
        pass
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


@dataclass
class Prepared:
    """One slice after nnU-Net's preprocessing: what the network sees, and how to go back."""

    data: np.ndarray  # (channels, 1, h, w) float32
    properties: dict  # nnU-Net's: bbox_used_for_cropping, shape_before_cropping, ...


class NnUNetEngine:
    """Runs an nnU-Net v2 2D model on slabs of axial slices (see the module docstring).

    model_folder: a models.folder.ModelFolder, a folder path, an installed name, or None for the store's default.
    device: auto (CUDA, then MPS, then CPU with a note), cpu, cuda or mps. folds: None = every fold of the
    model; several folds are ensembled by averaging probabilities. tta: mirroring test-time augmentation;
    None follows the reference code (on a GPU, not on the CPU), as does tile_step_size (0.5 / 1.0).
    batch_size: slices per chunk and tiles per forward pass. checkpoint: "best", "final", or None for the
    model folder's default (final for an nnU-Net results folder, as nnUNetv2_predict; best for the published
    layout). Slabs must be in the standard in-plane orientation (`standard_orientation`, see the module
    docstring). runtime: one of RUNTIMES (None: $LEGSEGNET_NNUNET_RUNTIME, else auto); precision: one of
    PRECISIONS (None: $LEGSEGNET_NNUNET_PRECISION, else fp32).
    """

    name = "nnunet"
    standard_orientation = True  # the pipeline hands over slabs turned to scan/orientation.py's standard

    def __init__(
        self,
        model_folder: ModelFolder | str | Path | None,
        device: str = "auto",
        folds: Sequence[int] | None = None,
        tta: bool | None = None,
        batch_size: int | None = None,
        checkpoint: str | None = None,
        progress: Progress | None = None,
        tile_step_size: float | None = None,
        store: ModelStore | None = None,
        runtime: str | None = None,
        precision: str | None = None,
    ) -> None:
        torch = _import_torch()
        from ..models.folder import ModelFolder
        from ..models.store import resolve_model

        self._torch = torch
        if isinstance(model_folder, ModelFolder):
            self.model = model_folder
        else:
            self.model = resolve_model(model_folder, store)
        self.device = select_device(device, progress)
        on_cpu = self.device.type == "cpu"
        self.runtime, self.precision = _runtime_and_precision(runtime, precision, self.device)
        self.threads = cpu_threads() if on_cpu else torch.get_num_threads()
        self._workers = None
        self._runners: dict = {}  # id(torch network) -> what runs it instead (OpenVINO, torch.compile)
        if on_cpu:
            torch.set_num_threads(self.threads)
            if self.threads > 1 and self.runtime == "torch":
                # one tile per core, each forward single-threaded: PyTorch's numbers up to float rounding,
                # and faster than splitting one tile's forward across cores as the reference code does
                from concurrent.futures import ThreadPoolExecutor

                self._workers = ThreadPoolExecutor(
                    self.threads, thread_name_prefix="nnunet-cpu", initializer=_one_thread
                )
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        # the reference code's settings: mirroring and overlapping tiles on a GPU, neither on the CPU
        self.tta = (not on_cpu) if tta is None else bool(tta)
        self.tile_step_size = tile_step_size if tile_step_size is not None else (1.0 if on_cpu else 0.5)
        if not 0 < self.tile_step_size <= 1:
            raise InputError(f"tile step size must be in (0, 1], not {self.tile_step_size}")
        self.batch_size = int(batch_size) if batch_size else (DEFAULT_CPU_BATCH if on_cpu else DEFAULT_GPU_BATCH)
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be at least 1, not {batch_size}")
        self.prefetch = not on_cpu  # prepare the next chunk while the accelerator works
        self.pin_memory = self.device.type == "cuda"  # page-locked host tiles: copies overlap the GPU's work
        self.input_format = self.model.input_format
        # called with each chunk's class probabilities (k, C, rows, cols) on the device, before the argmax
        # (the batch's confidence summary); None: nobody is watching
        self.probability_observer = None
        self.slice_uncertainty = None  # per slab slice, set by each segment call (uncertainty.py)
        self.slice_axes, axes_note = slice_axes.for_model(self.model)
        if axes_note and progress is not None:
            progress.note(axes_note)
        self._load(folds, checkpoint, progress)
        self._prepare_runtime()

    def _prepare_runtime(self) -> None:
        """Hands each network to the runtime chosen (nothing to do for PyTorch's own kernels)."""
        if self.runtime == "openvino":
            from .openvino_network import OpenVINONetwork

            shape = (1, self.num_inputs, *self.patch_size)
            for network, path in zip(self.networks, self.checkpoint_files):
                stat = os.stat(path)
                # the export cache's key: which weights (file, size, time), what network, which tile
                identity = f"{os.path.realpath(path)} {stat.st_size} {stat.st_mtime_ns} {network!r}"
                self._runners[id(network)] = OpenVINONetwork(network, shape, self.threads, self.precision, identity)
        elif self.runtime == "compile":
            torch = self._torch
            mode = "reduce-overhead" if self.device.type == "cuda" else None  # CUDA graphs on a GPU
            for network in self.networks:
                self._runners[id(network)] = torch.compile(network, mode=mode, dynamic=False)

    # ------------------------------------------------------------------ loading
    def _load(self, folds: Sequence[int] | None, checkpoint: str, progress: Progress | None) -> None:
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        from ..models.checkpoints import load_checkpoint
        from ..models.folder import CHECKPOINT_ALIASES

        plans = self.model.plans()
        self.dataset_json = self.model.dataset()
        try:
            self.plans_manager = PlansManager(plans)
            self.configuration = self.plans_manager.get_configuration(CONFIGURATION)
            self.label_manager = self.plans_manager.get_label_manager(self.dataset_json)
        except (KeyError, ValueError, TypeError, AssertionError, RuntimeError) as exc:
            raise InputError(
                f"model '{self.model.name}': nnU-Net cannot read its plans.json/dataset.json "
                f"({type(exc).__name__}: {exc}); copy both from the same training run"
            ) from None
        if self.label_manager.has_regions:
            raise InputError(
                f"model '{self.model.name}' was trained on overlapping regions; LegSegNet needs one label per voxel"
            )
        self.num_classes = self.label_manager.num_segmentation_heads
        if self.num_classes - 1 > 4:
            raise InputError(
                f"model '{self.model.name}' predicts {self.num_classes - 1} labels; LegSegNet knows 4 (SAT, SM, IAT, Bone)"
            )
        if len(self.configuration.patch_size) != 2:
            raise InputError(
                f"model '{self.model.name}': the '2d' configuration has a {len(self.configuration.patch_size)}D patch"
            )
        self.patch_size = tuple(int(p) for p in self.configuration.patch_size)
        self.preprocessor = self.configuration.preprocessor_class(verbose=False)
        num_inputs = len(self.dataset_json.get("channel_names", self.dataset_json.get("modality", {"0": ""})))
        self.num_inputs = num_inputs

        if list(self.plans_manager.transpose_forward)[0] != 0:
            # nnU-Net's 2D configuration slices along the first axis after this transpose; for such a model
            # that is not the axis its training images were stacked along
            raise InputError(
                f"model '{self.model.name}' cuts its training images into 2D slices along voxel axis "
                f"{list(self.plans_manager.transpose_forward)[0]} (plans.json transpose_forward "
                f"{list(self.plans_manager.transpose_forward)}), not along the slice axis; LegSegNet segments axial "
                "slices: train on volumes whose slice spacing is the largest, or on 2D slices"
            )
        if self.input_format != "png" and progress is not None:
            per_image = [s for s in self.configuration.normalization_schemes if s == "ZScoreNormalization"]
            if per_image:
                progress.note(
                    f"model '{self.model.name}' normalises each image by its own mean and SD (z-score): LegSegNet takes "
                    "them per slice, as for 2D training slices; nnU-Net on a whole volume takes them over the volume"
                )

        self.networks = []
        self.folds: list = []
        self.checkpoint_files: list[str] = []
        mirror_axes = None
        chosen = self.model.checkpoints(folds, checkpoint)
        # the checkpoint actually used, by its nnU-Net name ("final", "best") when it has one
        used = chosen[0][1].name
        self.checkpoint = {v: k for k, v in CHECKPOINT_ALIASES.items()}.get(used, used)
        for fold, path in chosen:
            ckpt = load_checkpoint(path, map_location="cpu")
            config_name = (ckpt.get("init_args") or {}).get("configuration", CONFIGURATION)
            if config_name != CONFIGURATION:
                raise InputError(
                    f"{path} was trained for nnU-Net's '{config_name}' configuration, not '2d'; "
                    "give the 2D model's folder"
                )
            # built without memory or random initialisation (half a second for the published network), the
            # checkpoint's tensors then taken as they are; a network with state the checkpoint lacks is rebuilt
            with self._torch.device("meta"):
                network = self._build_network(ckpt.get("trainer_name"), num_inputs, progress)
            try:
                network.load_state_dict(ckpt["network_weights"], assign=True)
                if any(t.is_meta for t in itertools.chain(network.parameters(), network.buffers())):
                    network = self._build_network(ckpt.get("trainer_name"), num_inputs, progress)
                    network.load_state_dict(ckpt["network_weights"])
            except (RuntimeError, KeyError, TypeError) as exc:
                raise InputError(
                    f"{path} does not fit the network that plans.json describes ({first_line(exc)}); "
                    "the plans and the checkpoint come from different models — copy them from the same training run"
                ) from None
            network.eval().to(self.device)
            self.networks.append(network)
            self.folds.append(fold)
            self.checkpoint_files.append(str(path))
            if mirror_axes is None:
                mirror_axes = ckpt.get("inference_allowed_mirroring_axes")
        self.mirror_axes = tuple(int(a) for a in mirror_axes) if mirror_axes is not None else None
        if self.tta and not self.mirror_axes:
            self.tta = False
            if progress is not None:
                progress.note("test-time mirroring is off: the model's checkpoint allows no mirroring axes")

        from nnunetv2.inference.sliding_window_prediction import compute_gaussian

        self.gaussian = compute_gaussian(
            self.patch_size, sigma_scale=1.0 / 8, value_scaling_factor=10, device=self.device
        )

    def _build_network(self, trainer_name: str | None, num_inputs: int, progress: Progress | None):
        """The network the checkpoint's trainer builds from the plans (deep supervision off).

        nnU-Net's own trainer builds it with get_network_from_plans; that is called directly, because
        importing the trainer module costs seconds. Other trainers are looked up among nnU-Net's own trainer
        classes only (the checkpoint names the trainer; the plans' names were checked when they were read).
        """
        import inspect

        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

        from ..models.plans_names import find_trainer_class

        builder = None
        if trainer_name and trainer_name != "nnUNetTrainer":
            found = find_trainer_class(trainer_name)
            if found is None:
                if progress is not None:
                    progress.note(
                        f"trainer '{trainer_name}' is not part of this nnU-Net; building the network from the plans"
                    )
            else:
                builder = found.build_network_architecture
        try:
            if builder is None:
                return get_network_from_plans(
                    self.configuration.network_arch_class_name,
                    self.configuration.network_arch_init_kwargs,
                    self.configuration.network_arch_init_kwargs_req_import,
                    num_inputs,
                    self.num_classes,
                    allow_init=False,  # the checkpoint's weights replace any initialisation
                    deep_supervision=False,
                )
            if "plans_manager" in inspect.signature(builder).parameters:
                return builder(
                    self.plans_manager, self.configuration, num_inputs, self.num_classes, enable_deep_supervision=False
                )
            return builder(
                self.configuration.network_arch_class_name,
                self.configuration.network_arch_init_kwargs,
                self.configuration.network_arch_init_kwargs_req_import,
                num_inputs,
                self.num_classes,
                enable_deep_supervision=False,
            )
        except Exception as exc:  # noqa: BLE001 - any failure here means plans nnU-Net cannot build
            raise InputError(
                f"model '{self.model.name}': nnU-Net cannot build the network its plans.json describes "
                f"({type(exc).__name__}: {first_line(exc)})"
            ) from None

    # ------------------------------------------------------------------ the Engine protocol
    def info(self) -> dict:
        out = {
            "engine": self.name,
            "model": self.model.name,
            "round": self.model.metadata.get("round"),  # model-in-the-loop round, None for other models
            "model_path": str(self.model.path),
            "folds": [f if isinstance(f, int) else str(f) for f in self.folds],
            "checkpoint": self.checkpoint,
            "tta": self.tta,
            "device": str(self.device),
            "runtime": self.runtime,
            "precision": self.precision,
            "input_format": self.input_format,
            "slice_axes": self.slice_axes,
        }
        if self.input_format == "png":
            out["resize"] = published.resize_backend()
        if self.model.licence:
            out["licence"] = self.model.licence
        return out

    def segment(self, slab: np.ndarray, spacing: tuple[float, float, float], progress: Progress) -> np.ndarray:
        """uint8 labels of slab.shape: 0 background, 1-4 tissues (see tissues.py). Afterwards
        `slice_uncertainty` holds one value per slab slice (uncertainty.py; NaN for slices without body)."""
        recorder = uncertainty.SliceUncertainty(slab, BODY_HU, chain=self.probability_observer)
        watching, self.probability_observer = self.probability_observer, recorder
        try:
            labels = self._segment_labels(slab, spacing, progress)
        finally:
            self.probability_observer = watching
        self.slice_uncertainty = recorder.values
        return labels

    def _segment_labels(self, slab: np.ndarray, spacing: tuple[float, float, float], progress: Progress) -> np.ndarray:
        if slab.ndim != 3:
            raise ValueError(f"slab must be (slices, rows, cols), not {slab.shape}")
        n = slab.shape[0]
        labels = np.zeros(slab.shape, dtype=np.uint8)
        progress.stage("segmenting", total=n)
        has_body = np.fromiter((bool((slab[k] > BODY_HU).any()) for k in range(n)), dtype=bool, count=n)
        skipped = int(n - has_body.sum())
        if skipped:
            progress.advance(skipped)
        todo = np.flatnonzero(has_body)
        chunks = [todo[start : start + self.batch_size] for start in range(0, len(todo), self.batch_size)]
        if not self.prefetch:
            for chunk in chunks:
                labels[chunk] = self.segment_slices(slab[chunk], spacing)
                progress.advance(len(chunk))
            return labels
        # the CPU-side preprocessing of the next chunk overlaps the GPU's work on this one
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1) as pool:
            upcoming = pool.submit(self.prepare, slab[chunks[0]], spacing) if chunks else None
            for i, chunk in enumerate(chunks):
                prepared = upcoming.result()
                if i + 1 < len(chunks):
                    upcoming = pool.submit(self.prepare, slab[chunks[i + 1]], spacing)
                labels[chunk] = self._labels_on_grid(prepared, slab.shape[1:])
                progress.advance(len(chunk))
        return labels

    # ------------------------------------------------------------------ the steps, usable one by one
    def segment_slices(self, slices: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
        """Labels (k, rows, cols) of a few HU slices on their own grid."""
        return self._labels_on_grid(self.prepare(slices, spacing), slices.shape[1:])

    def _labels_on_grid(self, prepared: list[Prepared], shape: tuple[int, int]) -> np.ndarray:
        """Labels of prepared slices on a (rows, cols) grid: fold-averaged probabilities, interpolated
        bilinearly (half-pixel centres) from the model's grid when it differs, then the argmax."""
        torch = self._torch
        rows, cols = shape
        with torch.inference_mode():
            p = slice_axes.from_model_order(self._probabilities(prepared), self.slice_axes)  # (k, C, H, W), slab order
            if p.shape[2:] != (rows, cols):
                shrink = rows < p.shape[2] or cols < p.shape[3]
                p = torch.nn.functional.interpolate(
                    p, size=(rows, cols), mode="bilinear", align_corners=False, antialias=shrink
                )
            if self.probability_observer is not None:
                self.probability_observer(p)
            return _argmax_classes(p).cpu().numpy()

    def segment_model_grid(self, slices: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
        """Labels on the model's grid in the model's axis order (256 x 256 for PNG-format models: what the
        reference code returns; the transposed slices for HU-format models in nnU-Net's order)."""
        with self._torch.inference_mode():
            return _argmax_classes(self._probabilities(self.prepare(slices, spacing))).cpu().numpy()

    def model_grid_probabilities(self, slices: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
        """Class probabilities (k, C, H, W), averaged over folds, on the grid the model was given, in its axis
        order (256 x 256 for PNG-format models, the slices' own grid for HU-format models)."""
        with self._torch.inference_mode():
            return self._probabilities(self.prepare(slices, spacing)).float().cpu().numpy()

    def _probabilities(self, prepared: list[Prepared]):
        total = None
        for network in self.networks:
            probabilities = self.export_probabilities(prepared, self.predict_logits(prepared, network))
            total = probabilities if total is None else total + probabilities
        return total / len(self.networks)

    def export_probabilities(self, prepared: list[Prepared], logits: list):
        """nnU-Net's export of each slice's logits: resampling back to the crop, softmax, crop reverted with
        background probability 1 outside it, transposition undone. Returns (k, C, H, W) on the device.

        When nothing was resampled or transposed (PNG-format models), this is done here in one batch on the
        device; otherwise nnU-Net's convert_predicted_logits_to_segmentation_with_correct_shape does it.
        """
        torch = self._torch
        out = None
        identity = list(self.plans_manager.transpose_forward) == [0, 1, 2]
        for k, (item, slice_logits) in enumerate(zip(prepared, logits)):
            props = item.properties
            before = tuple(int(v) for v in props["shape_before_cropping"])  # (1, H, W)
            if out is None:
                out = torch.zeros(
                    (len(prepared), self.num_classes, *before[1:]), dtype=torch.float32, device=self.device
                )
            if identity and tuple(props["shape_after_cropping_and_before_resampling"]) == tuple(item.data.shape[1:]):
                (z0, z1), (r0, r1), (c0, c1) = props["bbox_used_for_cropping"]
                out[k, 0] = 1.0
                out[k, :, r0:r1, c0:c1] = torch.softmax(slice_logits[:, 0].to(self.device).float(), 0)
            else:
                from nnunetv2.inference.export_prediction import (
                    convert_predicted_logits_to_segmentation_with_correct_shape,
                )

                _, probabilities = convert_predicted_logits_to_segmentation_with_correct_shape(
                    slice_logits.cpu(),
                    self.plans_manager,
                    self.configuration,
                    self.label_manager,
                    props,
                    return_probabilities=True,
                    num_threads_torch=torch.get_num_threads(),
                )
                out[k] = torch.from_numpy(np.asarray(probabilities[:, 0], dtype=np.float32)).to(self.device)
        return out

    def network_images(self, slices: np.ndarray, spacing: tuple[float, float, float]) -> tuple[np.ndarray, tuple]:
        """The images handed to nnU-Net's preprocessor, (k, 1, 1, H, W) float32, and the spacing it is told.

        `slices` are standard slices (rows toward the patient's left, columns toward posterior). Each
        preprocessing gets them in the order its models were trained in (slice_axes.py):
        - PNG format: as they are. The published encoding was made by the reference code from `vol[z]` of a
          nibabel array, whose rows are the first in-plane voxel axis: left-right for a scan stored LPS.
        - HU format: transposed, rows front-back and columns left-right, spacing (slice, row, column) of the
          transposed slice. nnU-Net's SimpleITK reader, which made these models' training arrays, reads a
          volume as (k, j, i) with spacing (k, j, i): for a scan stored LPS a slice is (front-back, left-right).
          So the preprocessor below gets the very array and spacing it gets inside nnUNetv2_predict; the
          slice spacing is the scan's, as nnU-Net's would be (its resampling choice looks at it).
        (A model recognised as trained by an earlier LegSegNet on HU slices gets the published order it
        learnt: slice_axes.for_model.)
        """
        slices, spacing = slice_axes.to_model_order(np.asarray(slices), spacing, self.slice_axes)
        if self.input_format == "png":
            images = published.published_input_images(slices)
            return images.astype(np.float32)[:, None, None], published.SPACING
        return slices.astype(np.float32)[:, None, None], tuple(float(s) for s in spacing)

    def prepare(self, slices: np.ndarray, spacing: tuple[float, float, float]) -> list[Prepared]:
        """nnU-Net's own preprocessing (crop to non-zero, normalisation, resampling) of each slice."""
        images, nnunet_spacing = self.network_images(slices, spacing)
        prepared = []
        for image in images:
            data, _, properties = self.preprocessor.run_case_npy(
                image,
                None,
                {"spacing": list(nnunet_spacing)},
                self.plans_manager,
                self.configuration,
                self.dataset_json,
            )
            prepared.append(Prepared(np.ascontiguousarray(data, dtype=np.float32), properties))
        return prepared

    def predict_logits(self, prepared: list[Prepared], network) -> list:
        """nnU-Net's sliding-window logits (C, 1, h, w) per slice, the tiles of all slices batched together.

        Same padding, tile positions, Gaussian weighting, mirroring and float16 accumulation as
        nnUNetPredictor.predict_sliding_window_return_logits, so the result matches the reference code.
        """
        torch = self._torch
        p0, p1 = self.patch_size
        padded, reverts, tiles = [], [], []  # tiles: (slice index, row, col)
        for index, item in enumerate(prepared):
            image, revert = self._pad(item)
            padded.append(image)
            reverts.append(revert)
            tiles.extend((index, r, c) for r, c in self._tile_positions(image))

        device = self.device
        if device.type != "cpu":
            # each padded slice goes to the device once (page-locked, copied while the device works) and its
            # tiles are cut there: overlapping tiles are not copied twice
            padded = [p.pin_memory().to(device, non_blocking=True) if self.pin_memory else p.to(device) for p in padded]
        # nnU-Net accumulates in float16. Float32 buffers rounded to float16 after every addition give the
        # same numbers and are much faster on CPUs; a slice covered by one tile needs one rounding only.
        tiles_per_slice = np.bincount([i for i, _, _ in tiles], minlength=len(padded))
        accumulated: list = [None] * len(padded)
        gaussian = self.gaussian.float()
        if device.type == "cuda":
            autocast = torch.autocast("cuda", enabled=True)  # nnU-Net's float16 autocast on a GPU
        else:
            autocast = _null_context()
        tile_batch = max(1, self.batch_size)
        with torch.inference_mode(), autocast:
            for start in range(0, len(tiles), tile_batch):
                group = tiles[start : start + tile_batch]
                batch = torch.stack([padded[i][:, r : r + p0, c : c + p1] for i, r, c in group])
                if self.runtime == "compile" and len(group) < tile_batch:  # one shape: no recompiling
                    batch = torch.cat([batch, batch.new_zeros((tile_batch - len(group), *batch.shape[1:]))])
                weighted = self._forward(network, batch)[: len(group)].float() * gaussian
                first_addition = weighted.half().float()  # half(0 + x)
                for (i, r, c), tile_logits, rounded in zip(group, weighted, first_addition):
                    if tiles_per_slice[i] == 1:
                        accumulated[i] = rounded
                        continue
                    if accumulated[i] is None:
                        accumulated[i] = torch.zeros((self.num_classes, *padded[i].shape[1:]), device=device)
                    area = accumulated[i][:, r : r + p0, c : c + p1]
                    area.copy_((area + tile_logits).half())
        out = []
        for image, logits, revert in zip(padded, accumulated, reverts):
            weight = self._weight_map(tuple(image.shape[1:]))
            logits = (logits / weight).half()
            logits = logits[(slice(None), *revert[1:])]
            out.append(logits[:, None])  # (C, 1, h, w) float16 on the device, nnU-Net's 2D-as-3D shape
        return out

    def _weight_map(self, shape: tuple[int, int]):
        """The sum of the tiles' Gaussian weights over a padded slice, accumulated in float16 as nnU-Net does;
        the same for every slice of that shape, so it is computed once."""
        cache = self.__dict__.setdefault("_weight_maps", {})
        if shape not in cache:
            torch = self._torch
            p0, p1 = self.patch_size
            gaussian = self.gaussian.float()
            weight = torch.zeros(shape, device=self.device)
            for r, c in self._tile_positions(torch.empty((1, *shape))):
                area = weight[r : r + p0, c : c + p1]
                area.copy_((area + gaussian).half())
            cache[shape] = weight
        return cache[shape]

    def _pad(self, item: Prepared):
        """The slice padded to at least the patch size, centred, as nnU-Net's predictor pads it."""
        from acvl_utils.cropping_and_padding.padding import pad_nd_image

        image = self._torch.from_numpy(item.data[:, 0])  # (channels, h, w)
        return pad_nd_image(image, self.patch_size, "constant", {"value": 0}, True, None)

    def _tile_positions(self, padded) -> list[tuple[int, int]]:
        """Top-left corners of the sliding-window tiles (nnU-Net's compute_steps_for_sliding_window)."""
        from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

        steps = compute_steps_for_sliding_window(tuple(padded.shape[1:]), self.patch_size, self.tile_step_size)
        return [(r, c) for r in steps[0] for c in steps[1]]

    def _tiles(self, item: Prepared) -> list[tuple[int, int]]:
        return self._tile_positions(self._pad(item)[0])

    def _forward(self, network, batch):
        """The network's logits for a batch of tiles; with TTA, the mean over every mirroring of the tile.
        On a multi-core CPU the tiles are shared out to the worker threads, one tile per forward."""
        if self._workers is None or len(batch) < 2:
            return self._forward_tiles(network, batch)
        torch = self._torch

        def one_tile(tile):
            with torch.inference_mode():
                return self._forward_tiles(network, tile[None])

        try:
            return torch.cat(list(self._workers.map(one_tile, batch)))
        finally:
            torch.set_num_threads(self.threads)  # the workers' setting must not stick to this thread

    def _forward_tiles(self, network, batch):
        torch = self._torch
        run = self._runners.get(id(network), network)
        if self.precision == "bf16" and not self._runners:  # PyTorch's CPU kernels in bfloat16 (autocast is per thread)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return self._forward_mirrored(run, batch)
        return self._forward_mirrored(run, batch)

    def _forward_mirrored(self, run, batch):
        torch = self._torch
        prediction = run(batch).float()
        if self.tta and self.mirror_axes:
            axes = [a + 2 for a in self.mirror_axes]
            combinations = [c for k in range(len(axes)) for c in itertools.combinations(axes, k + 1)]
            for flip in combinations:
                prediction += torch.flip(run(torch.flip(batch, flip)).float(), flip)
            prediction /= len(combinations) + 1
        return prediction


def _runtime_and_precision(runtime: str | None, precision: str | None, device) -> tuple[str, str]:
    """The runtime and precision asked for (arguments, else $LEGSEGNET_NNUNET_RUNTIME / _PRECISION, else auto
    and fp32), checked against the device; auto is OpenVINO on the CPU when it is installed, else PyTorch."""
    from . import openvino_network

    runtime = (runtime or os.environ.get(RUNTIME_ENV) or "auto").lower()
    precision = (precision or os.environ.get(PRECISION_ENV) or "fp32").lower()
    if runtime not in RUNTIMES:
        raise InputError(f"unknown nnU-Net runtime '{runtime}'; choose one of {', '.join(RUNTIMES)}")
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision '{precision}'; choose one of {', '.join(PRECISIONS)}")
    on_cpu = device.type == "cpu"
    if runtime == "auto":
        runtime = "openvino" if on_cpu and openvino_network.available() else "torch"
    if runtime == "openvino":
        if not on_cpu:
            raise InputError(f"the OpenVINO runtime runs nnU-Net on the CPU, not on {device.type}; use --device cpu")
        if not openvino_network.available():
            raise InputError(
                "the OpenVINO runtime needs the packages openvino and onnx (pip install openvino onnx); "
                "or use the torch runtime"
            )
    if precision == "bf16" and not on_cpu:
        raise InputError(f"bf16 precision is for the CPU; on {device.type} nnU-Net's own float16 autocast is used")
    if device.type == "cuda":
        precision = "fp16-autocast"  # nnU-Net's own mixed precision on a CUDA GPU
    return runtime, precision


def _one_thread() -> None:
    """Worker-thread initializer: this thread's PyTorch (OpenMP) work runs on this thread only."""
    import torch

    torch.set_num_threads(1)


def _argmax_classes(probabilities):
    """argmax over the class axis of (k, C, H, W) as uint8, first maximum winning like torch.argmax;
    one pass per class, much faster on CPUs than torch's strided argmax over channels."""
    import torch

    best = probabilities[:, 0].clone()
    labels = torch.zeros(best.shape, dtype=torch.uint8, device=probabilities.device)
    for c in range(1, probabilities.shape[1]):
        candidate = probabilities[:, c]
        labels[candidate > best] = c
        torch.maximum(best, candidate, out=best)
    return labels


class _null_context:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
