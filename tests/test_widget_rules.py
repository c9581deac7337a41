"""The widget's rules (slicer_logic/widget_rules.py), tested without Qt.

The slice-range test drives `SliceRangeSync` through stand-ins for Qt's QSpinBox and the parameter node's GUI
connection (Qt cannot run here): a spin box whose maximum drops below its value clamps it and emits
valueChanged, which the connection writes into the node, whose Modified event calls the widget's update again,
as in Slicer. The same stand-ins run the widget's previous update code, which shows the defect.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest

from LegSegNetLib.slicer_logic import widget_rules
from LegSegNetLib.slicer_logic.widget_rules import (
    NO_MODEL_LABEL,
    SliceRangeSync,
    export_folder,
    forget_library_modules,
    is_unset_folder,
    model_combo_entries,
    model_install_source,
    range_for_volume,
)


# ---------------------------------------------------------------------- Qt stand-ins (Qt GUI cannot run here)
class SpinBox:
    """QSpinBox's behaviour that matters: setting `maximum` below `value` clamps it and emits valueChanged
    (unless signals are blocked); `blockSignals` returns the previous state."""

    def __init__(self, maximum: int = 99):
        self._maximum, self._value, self._blocked = maximum, 0, False
        self.valueChanged: list = []

    @property
    def maximum(self) -> int:
        return self._maximum

    @maximum.setter
    def maximum(self, value: int) -> None:
        self._maximum = value
        self.value = min(self._value, value)

    @property
    def value(self) -> int:
        return self._value

    @value.setter
    def value(self, value: int) -> None:
        value = min(max(value, 0), self._maximum)
        if value != self._value:
            self._value = value
            if not self._blocked:
                for slot in list(self.valueChanged):
                    slot(value)

    def blockSignals(self, block: bool) -> bool:
        previous, self._blocked = self._blocked, block
        return previous


class Volume:
    def __init__(self, volume_id: str, n_slices: int):
        self.id, self.n = volume_id, n_slices


class Widget:
    """A parameter node (volume, first, last) connected to two spin boxes as connectGui does, and the
    widget's update on every Modified event: `update(widget)` is the code under test."""

    def __init__(self, update):
        self.volume, self.first, self.last = None, 0, 0
        self.boxes = [SpinBox(), SpinBox()]
        self.boxes[0].valueChanged.append(lambda v: self.set(first=v))
        self.boxes[1].valueChanged.append(lambda v: self.set(last=v))
        self._update = update
        self.sync = SliceRangeSync()
        self.state = {"rangeVolumeID": None}

    def set(self, **values) -> None:  # a parameter node write: GUI refreshed, then Modified
        for key, value in values.items():
            setattr(self, key, value)
        self.boxes[0].value, self.boxes[1].value = self.first, self.last
        self._update(self)


def new_update(widget: Widget) -> None:
    """What LegSegNetWidget._onParameterNodeModified does with the range now."""
    if widget.volume is not None:
        widget.sync.update(
            widget.volume.id,
            widget.volume.n,
            (widget.first, widget.last),
            widget.boxes,
            lambda first, last: widget.set(first=first, last=last),
        )


def old_update(widget: Widget) -> None:
    """The widget's range code before the fix (maxima first, then a volume check that a nested call reaches)."""
    volume, n = widget.volume, widget.volume.n if widget.volume else 0
    if volume is None:
        return
    for box in widget.boxes:
        box.maximum = n - 1
    if volume.id != widget.state["rangeVolumeID"]:
        widget.state["rangeVolumeID"] = volume.id
        if widget.last == 0 or widget.last >= n:
            widget.set(first=0, last=n - 1)


def choose_range_then_switch(update) -> Widget:
    widget = Widget(update)
    widget.set(volume=Volume("A", 300))
    widget.set(first=100, last=250)
    widget.set(volume=Volume("B", 120))
    return widget


def test_switching_to_a_shorter_volume_gives_all_of_its_slices():
    widget = choose_range_then_switch(new_update)
    assert (widget.first, widget.last) == (0, 119)
    assert [b.value for b in widget.boxes] == [0, 119] and [b.maximum for b in widget.boxes] == [119, 119]


def test_the_stand_ins_show_the_old_widget_code_keeping_a_partial_range():
    widget = choose_range_then_switch(old_update)
    assert (widget.first, widget.last) == (100, 119)  # the defect: neither the old range nor the new volume


def test_switching_to_a_longer_volume_and_back_gives_all_slices_each_time():
    widget = Widget(new_update)
    widget.set(volume=Volume("A", 50))
    assert (widget.first, widget.last) == (0, 49)
    widget.set(first=10, last=20)
    widget.set(volume=Volume("B", 400))
    assert (widget.first, widget.last) == (0, 399) and widget.boxes[1].maximum == 399
    widget.set(volume=Volume("A", 50))
    assert (widget.first, widget.last) == (0, 49)


def test_a_range_saved_with_the_scene_is_kept_when_it_fits():
    widget = Widget(new_update)
    widget.first, widget.last = 30, 90  # read from a saved scene before the widget saw any volume
    widget.set(volume=Volume("A", 120))
    assert (widget.first, widget.last) == (30, 90)
    widget.sync.forget()  # scene closed; a scene whose range does not fit its volume gets all slices
    for box in widget.boxes:  # connectGui to the new scene's node resets the maxima (the parameter's Maximum)
        box.maximum = 99999
    widget.first, widget.last = 30, 200
    widget.set(volume=Volume("B", 120))
    assert (widget.first, widget.last) == (0, 119)


def test_range_rules():
    assert range_for_volume(5, 500, 100, "same") == (5, 99)
    assert range_for_volume(150, 160, 100, "same") == (99, 99)
    assert range_for_volume(5, 50, 100, "switched") == (0, 99)
    assert range_for_volume(5, 50, 100, "first") == (5, 50)
    assert range_for_volume(0, 0, 100, "first") == (0, 99)
    assert range_for_volume(3, 4, 0, "first") == (0, 0)


# ---------------------------------------------------------------------- model combo box
def test_the_model_combo_shows_the_parameter_nodes_model():
    entries, index = model_combo_entries(["round1", "round2"], "round2")
    assert entries == [(NO_MODEL_LABEL, ""), ("round1", "round1"), ("round2", "round2")] and index == 2
    assert model_combo_entries(["round1"], "")[1] == 0


def test_a_saved_model_that_is_not_installed_is_shown_as_such_not_as_none():
    entries, index = model_combo_entries(["round1"], "published")
    assert entries[index] == ("published (not installed)", "published")


def test_install_from_file_takes_a_zip_or_the_folder_of_a_plans_json(tmp_path):
    assert model_install_source(str(tmp_path / "model.zip")) == str(tmp_path / "model.zip")
    folder = tmp_path / "Trainer__Plans__2d"
    assert model_install_source(str(folder / "plans.json")) == str(folder)


# ---------------------------------------------------------------------- export folder
def test_export_never_goes_to_the_working_directory_or_a_root(tmp_path):
    documents = str(tmp_path / "Documents")
    for unset in ("", ".", "/", "relative/folder", os.getcwd()):
        assert is_unset_folder(unset), unset
        folder = export_folder(unset, "CT: calf/left", documents=documents)
        assert folder == tmp_path / "Documents" / "LegSegNet" / "CT_ calf_left", folder
    assert not is_unset_folder(str(tmp_path / "mine"))


def test_export_goes_beside_the_saved_scene_or_where_the_user_chose(tmp_path):
    scene = tmp_path / "study" / "scene.mrml"
    assert export_folder(".", "calf", scene_url=str(scene), documents="") == tmp_path / "study" / "calf LegSegNet"
    assert export_folder(str(tmp_path / "chosen"), "calf", scene_url=str(scene)) == tmp_path / "chosen"
    # no Documents folder known: the home folder, never the working directory
    assert export_folder("", "calf", home=str(tmp_path / "home")) == tmp_path / "home" / "LegSegNet" / "calf"
    assert export_folder("", "...", documents=str(tmp_path)) == tmp_path / "LegSegNet" / "scan"


# ---------------------------------------------------------------------- Slicer services
def test_terminology_is_registered_once_with_slicers_terminology_logic():
    slicer = pytest.importorskip("slicer", reason="Slicer's terminology logic comes with slicer-core")
    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    name = widget_rules.register_terminology(logic)
    assert name == "Segmentation category and type - LegSegNet"
    assert widget_rules.register_terminology(logic) == name  # already there: not loaded again
    import vtk

    names = vtk.vtkStringArray()
    logic.GetLoadedTerminologyNames(names)
    assert [names.GetValue(i) for i in range(names.GetNumberOfValues())].count(name) == 1


def test_reload_reads_the_library_package_again(tmp_path, monkeypatch):
    package = tmp_path / "reload_demo_lib"
    (package / "part").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "part" / "__init__.py").write_text("")
    (package / "part" / "rule.py").write_text("ANSWER = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert importlib.import_module("reload_demo_lib.part.rule").ANSWER == 1
    (package / "part" / "rule.py").write_text("ANSWER = 2  # edited while Slicer runs\n")
    importlib.invalidate_caches()
    assert importlib.import_module("reload_demo_lib.part.rule").ANSWER == 1  # a plain re-import keeps the old
    dropped = forget_library_modules("reload_demo_lib")
    assert dropped == ["reload_demo_lib", "reload_demo_lib.part", "reload_demo_lib.part.rule"]
    for stale in Path(package).rglob("__pycache__"):  # same size and second: make the edit visible for sure
        for cached in stale.iterdir():
            cached.unlink()
    assert importlib.import_module("reload_demo_lib.part.rule").ANSWER == 2
    assert "pytest" in sys.modules  # nothing else dropped
