"""The one GPU probe: which accelerators this process's PyTorch can use.

Used by the nnU-Net engine and training to choose a device (`nnunet.select_device`) and by the worker's
`devices` command, which the Slicer module runs in the worker's interpreter (Slicer itself never imports
torch) for its device report and its "is there a GPU" question before training.
"""

from __future__ import annotations

import importlib.util


def probe(torch=None) -> dict:
    """{"torch": version or None, "cuda": device name or None, "cuda_build": CUDA version torch was built
    with or None, "mps": bool}. Without PyTorch only "torch": None and no accelerator."""
    if torch is None:
        if importlib.util.find_spec("torch") is None:
            return {"torch": None, "cuda": None, "cuda_build": None, "mps": False}
        import torch
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    mps = getattr(torch.backends, "mps", None)
    return {
        "torch": str(torch.__version__),
        "cuda": cuda,
        "cuda_build": torch.version.cuda,
        "mps": bool(mps is not None and mps.is_available()),
    }


def has_gpu(found: dict) -> bool:
    return bool(found.get("cuda") or found.get("mps"))


def describe(found: dict) -> str:
    """One line for people (the Slicer module's device report)."""
    if not found.get("torch"):
        return "PyTorch is not installed: the nnU-Net engine offers to install it; the threshold engine runs on CPU"
    cuda = found["cuda"] or "not available"
    mps = "available" if found.get("mps") else "not available"
    return (
        f"PyTorch {found['torch']}: CUDA: {cuda}; MPS: {mps} "
        "(the worker falls back to CPU with a note when the GPU cannot be used)"
    )
