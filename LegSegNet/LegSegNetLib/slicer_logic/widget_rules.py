"""The widget's decisions as plain functions and one small class, without Qt, so that they are tested here
(the widget in LegSegNet.py only calls them):

- `SliceRangeSync`: First/Last slice when the volume changes, without the spin boxes' clamping writing a
  partial range back into the parameter node;
- `model_combo_entries`: the model combo box's items and selection, from the parameter node's model;
- `export_folder`: where Export writes when the user chose no folder (beside the scene, else in Documents;
  never Slicer's working directory or a filesystem root);
- `model_install_source`: what "Install from file" installs (a .zip, or the folder of a chosen plans.json);
- `register_terminology`: the segments' terminology loaded into Slicer once (at startup and on demand);
- `forget_library_modules`: what the module's Reload needs so the library package is read again.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import Callable

from ..core.terminology import TERMINOLOGY_FILE


# ---------------------------------------------------------------------- slice range
def range_for_volume(first: int, last: int, n_slices: int, change: str) -> tuple[int, int]:
    """The range to keep for a volume of `n_slices`. `change`: "first" (the first volume this widget sees,
    e.g. after loading a scene: a stored range that fits it is the one saved with it, so it is kept),
    "switched" (the user chose another volume: all its slices), "same" (the range clamped into the volume)."""
    if n_slices <= 0:
        return 0, 0
    fits = 0 <= first <= last < n_slices
    if change == "switched" or (change == "first" and (last == 0 or not fits)):
        return 0, n_slices - 1
    last = min(max(last, 0), n_slices - 1)
    return min(max(first, 0), last), last


class SliceRangeSync:
    """Keeps the First/Last slice spin boxes and the stored range consistent when the volume changes.

    A QSpinBox whose maximum drops below its value clamps the value and emits valueChanged; the parameter
    node's GUI connection then writes that clamped value into the node, whose Modified event calls the
    widget's update again before it has finished (the old code ended up with a partial range, e.g. slices
    100..119 of a new 120-slice volume after 100..250 of a 300-slice one). Here the new range is decided
    first, the maxima change with the boxes' signals blocked, the range is written once, and a nested call
    (from that write) does nothing.
    """

    def __init__(self) -> None:
        self.volume_id: str | None = None
        self._updating = False

    def update(
        self,
        volume_id: str,
        n_slices: int,
        stored: tuple[int, int],
        spin_boxes: Sequence,
        write_range: Callable[[int, int], None],
    ) -> tuple[int, int] | None:
        """Set the boxes' maxima to the last slice and write the range to keep (when it differs from
        `stored`). Returns that range, or None for a nested call."""
        if self._updating:
            return None
        self._updating = True
        try:
            change = "same" if volume_id == self.volume_id else "first" if self.volume_id is None else "switched"
            self.volume_id = volume_id  # first: a nested call must not see the volume as new again
            first, last = range_for_volume(int(stored[0]), int(stored[1]), n_slices, change)
            for box in spin_boxes:
                was_blocked = box.blockSignals(True)  # a clamp must not reach the parameter node
                try:
                    box.maximum = max(n_slices - 1, 0)
                finally:
                    box.blockSignals(was_blocked)
            if (first, last) != (int(stored[0]), int(stored[1])):
                write_range(first, last)
            return first, last
        finally:
            self._updating = False

    def forget(self) -> None:
        """The scene was closed: the next volume is the first one seen (its stored range is kept if it fits)."""
        self.volume_id = None


# ---------------------------------------------------------------------- models
NO_MODEL_LABEL = "(none: threshold engine)"


def model_combo_entries(installed: Sequence[str], saved: str) -> tuple[list[tuple[str, str]], int]:
    """(label, model name) items of the model combo box and the index to show: the parameter node's model,
    also when it is not installed here (a scene from another computer): it is listed as such rather than
    shown as "(none)" while Apply would use it."""
    entries = [(NO_MODEL_LABEL, "")] + [(name, name) for name in installed]
    if saved and saved not in installed:
        entries.append((f"{saved} (not installed)", saved))
    index = next(i for i, (_, name) in enumerate(entries) if name == (saved or ""))
    return entries, index


def model_install_source(chosen: str) -> str:
    """What to install from the "Install from file" dialog's choice: a model .zip as it is; a `plans.json`
    stands for the model folder it is in (a file dialog cannot pick folders and files at once)."""
    path = Path(chosen)
    return str(path.parent) if path.name == "plans.json" else str(path)


# ---------------------------------------------------------------------- export folder
def is_unset_folder(folder: str, working_directory: str | None = None) -> bool:
    """True for what a directory button shows when nobody chose a folder: '', '.', a relative path, a
    filesystem root ('/' is Slicer's working directory on macOS) or the application's working directory."""
    if not folder or not os.path.isabs(folder):
        return True
    path = Path(folder)
    if path == Path(path.anchor):
        return True
    cwd = working_directory if working_directory is not None else os.getcwd()
    return os.path.normcase(os.path.normpath(folder)) == os.path.normcase(os.path.normpath(cwd))


def safe_folder_name(name: str) -> str:
    """`name` usable as a folder name on every platform (the volume's name can hold anything)."""
    cleaned = re.sub(r'[<>:"/\\|?*\x00-\x1f]+', "_", name).strip(" .")
    return cleaned or "scan"


def export_folder(
    chosen: str,
    volume_name: str,
    scene_url: str = "",
    documents: str = "",
    home: str | None = None,
    working_directory: str | None = None,
) -> Path:
    """Where Export writes: the folder the user chose, else `<volume> LegSegNet` beside the saved scene,
    else `Documents/LegSegNet/<volume>` (the home folder when there is no Documents folder)."""
    if not is_unset_folder(chosen, working_directory):
        return Path(chosen)
    name = safe_folder_name(volume_name)
    if scene_url and os.path.isabs(scene_url):
        return Path(scene_url).parent / f"{name} LegSegNet"
    base = documents if documents and not is_unset_folder(documents, working_directory) else (home or str(Path.home()))
    return Path(base) / "LegSegNet" / name


# ---------------------------------------------------------------------- Slicer services
def register_terminology(terminologies, path: Path = TERMINOLOGY_FILE) -> str:
    """Load the segments' terminology (Resources/LegSegNet.term.json) into Slicer's terminology logic unless it
    is loaded already; returns its context name. Called at Slicer's startup, so scripts and scenes loaded
    before the module is opened show the segments' terminology too."""
    import vtk

    context = json.loads(Path(path).read_text(encoding="utf-8"))["SegmentationCategoryTypeContextName"]
    loaded = vtk.vtkStringArray()
    terminologies.GetLoadedTerminologyNames(loaded)
    if context in {loaded.GetValue(i) for i in range(loaded.GetNumberOfValues())}:
        return context
    name = terminologies.LoadTerminologyFromFile(str(path))
    if not name:
        raise RuntimeError(f"Slicer could not load the terminology file {path}")
    return name


def forget_library_modules(
    package: str = "LegSegNetLib", modules: MutableMapping[str, object] | None = None
) -> list[str]:
    """Drop `package` and its submodules from the import cache, so that the next import (the module file,
    re-run by Slicer's Reload) reads the library's files again. Slicer's own reload re-reads only the module
    file. Returns the names dropped."""
    modules = sys.modules if modules is None else modules
    names = sorted(n for n in list(modules) if n == package or n.startswith(package + "."))
    for name in names:
        del modules[name]
    return names
