"""The nnU-Net network on OpenVINO: the CPU runtime of the nnU-Net engine when OpenVINO is installed.

On the CPU the network's forward pass is nearly all of the engine's time. OpenVINO ran the published-size
2D U-Net (192 x 256 tile) about 1.4x faster than PyTorch's own CPU kernels in float32 on a 2-core AVX-512
machine, and lost much less when other programs shared the cores (README: speed). Its numbers are
PyTorch's up to float rounding (labels identical on >= 99.9 % of voxels, tests/test_nnunet_runtimes.py).

The network is exported once per set of weights (torch.onnx, then OpenVINO's own format, weights kept in
float32) into a per-user cache ($LEGSEGNET_CACHE_DIR, else the platform's cache folder), named by a hash of
the checkpoint file's identity (path, size, modification time), the architecture and the versions; later runs only compile it (a fraction of a second). A
cache that cannot be written costs only the export on every run. Precision: "fp32" (default, OpenVINO
would otherwise pick bf16 by itself on CPUs that have it) or "bf16", only when asked for.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

CACHE_ENV = "LEGSEGNET_CACHE_DIR"
CACHE_KEEP = 6  # exported networks kept (the most recently used; each is about as large as its checkpoint)
_FORMAT = "1"  # bump when the export changes


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None and importlib.util.find_spec("onnx") is not None


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser() / "openvino"
    from ..models.store import _platformdirs

    return Path(_platformdirs().user_cache_dir("legsegnet", appauthor=False)) / "openvino"


def _key(tile_shape: tuple, identity: str) -> str:
    """The cache file's name: the weights' identity (the engine's: checkpoint file, size, modification time,
    the network's structure), the tile, and the versions that made the file."""
    import openvino
    import torch

    digest = hashlib.blake2b(digest_size=16)
    for text in (_FORMAT, openvino.__version__, torch.__version__, repr(tile_shape), identity):
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def _export(network, tile_shape: tuple, folder: Path):
    """The network as an OpenVINO model (float32 weights), via an ONNX file in `folder`."""
    import warnings

    import openvino as ov
    import torch

    onnx_file = folder / "network.onnx"
    options = {"input_names": ["tiles"], "output_names": ["logits"], "opset_version": 17}
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's notes on instance norm in eval mode
        try:  # the TorchScript exporter: no onnxscript needed (PyTorch 2.5 and newer default to dynamo)
            torch.onnx.export(network, torch.zeros(tile_shape), str(onnx_file), dynamo=False, **options)
        except TypeError:  # PyTorch older than 2.5 has no `dynamo` argument and exports this way anyway
            torch.onnx.export(network, torch.zeros(tile_shape), str(onnx_file), **options)
    return ov.Core().read_model(str(onnx_file))


def _forget_old(folder: Path) -> None:
    """Removes all but the CACHE_KEEP most recently used exports (a process still compiling a removed one
    falls back to exporting afresh)."""

    def last_used(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except OSError:  # removed meanwhile by another process
            return 0.0

    entries = sorted(folder.glob("*.xml"), key=last_used, reverse=True)
    for old in entries[CACHE_KEEP:]:
        for path in (old, old.with_suffix(".bin")):
            path.unlink(missing_ok=True)


class OpenVINONetwork:
    """Callable like the torch network on CPU tile batches (n, C, p0, p1) → logits (n, classes, p0, p1).

    Compiled for one tile (a static shape: OpenVINO's fastest); the tiles of a batch run in parallel streams."""

    def __init__(self, network, tile_shape: tuple, threads: int, precision: str, identity: str) -> None:
        import openvino as ov

        tile_shape = (1, *tuple(int(v) for v in tile_shape[1:]))
        key = _key(tile_shape, identity)
        core = ov.Core()
        # one stream (one tile at a time, one thread) per core, threads not pinned: as fast as one tile over all
        # cores on an idle machine, and 1.3-1.7x faster when other programs share the cores (measured on 2 cores)
        config = {
            "INFERENCE_NUM_THREADS": int(threads),
            "NUM_STREAMS": int(threads),
            "PERFORMANCE_HINT": "THROUGHPUT",
            "ENABLE_CPU_PINNING": False,
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        }
        model_file = None
        try:
            folder = cache_dir()
            model_file = folder / f"{key}.xml"
            self.cached = model_file.is_file() and model_file.with_suffix(".bin").is_file()
            if self.cached:
                os.utime(model_file)  # recently used: kept
            else:
                folder.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryDirectory(dir=folder, prefix=".export-") as tmp:
                    model = _export(network, tile_shape, Path(tmp))
                    staged = Path(tmp) / "model.xml"
                    ov.save_model(model, str(staged), compress_to_fp16=False)
                    os.replace(staged.with_suffix(".bin"), model_file.with_suffix(".bin"))
                    os.replace(staged, model_file)
                _forget_old(folder)
            self.compiled = core.compile_model(str(model_file), "CPU", config)
        except (OSError, RuntimeError):  # no writable cache, or a damaged file in it: export afresh
            if model_file is not None:
                for path in (model_file, model_file.with_suffix(".bin")):  # the next run exports into the cache
                    with contextlib.suppress(OSError):
                        path.unlink()
            with tempfile.TemporaryDirectory(prefix="legsegnet-openvino-") as tmp:
                self.compiled = core.compile_model(_export(network, tile_shape, Path(tmp)), "CPU", config)
        self.queue = ov.AsyncInferQueue(self.compiled, int(threads))
        self.version = ov.__version__

    def __call__(self, batch):
        import torch

        tiles = batch.detach().cpu().float().numpy()
        out: list = [None] * len(tiles)

        def done(request, k: int) -> None:
            out[k] = np.array(request.get_output_tensor(0).data, copy=True)

        self.queue.set_callback(done)
        for k in range(len(tiles)):
            self.queue.start_async({0: np.ascontiguousarray(tiles[k : k + 1])}, k)
        self.queue.wait_all()
        return torch.from_numpy(np.concatenate(out))
