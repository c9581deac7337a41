"""Hostile model files through the real `legsegnet` command: plans that would run code, zip bombs.

A model is untrusted input. Its plans.json names Python objects that nnU-Net imports and calls, so every
such name must be one that nnU-Net itself ships (LegSegNetLib/models/plans_names.py); the payloads here would
create a marker file, which must never appear. An archive yields only the files the model is made of,
their size bounded; the bombs are a few hundred MB of zeros (a small zip), and the command runs with
a file-size limit (RLIMIT_FSIZE), so writing any large file anywhere would kill it.

The model is the tiny real nnU-Net model the suite trains itself (tests/nnunet_fixtures.py), so the
attacks meet nnU-Net's real network builder and the untouched model must still install and segment.
"""

from __future__ import annotations

import inspect
import json
import os
import pkgutil
import pydoc
import resource
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import nnunet_fixtures  # noqa: E402
import writers as w  # noqa: E402

from LegSegNetLib.core.errors import InputError  # noqa: E402
from LegSegNetLib.models import plans_names  # noqa: E402
from LegSegNetLib.models.folder import load_plans  # noqa: E402

pytest.importorskip("torch")
pytest.importorskip("nnunetv2")

ROOT = Path(__file__).resolve().parents[1]
ZEROS_BYTES = 300 * 1024**2  # the bomb: compresses to well under 1 MB
FILE_SIZE_LIMIT = 64 * 1024**2  # no file the CLI writes for the tiny model comes near this


# ====================================================================== helpers
@pytest.fixture(scope="module")
def png_model() -> Path:
    return nnunet_fixtures.get_model("png")


def _cli(*args, store: Path, tmp: Path | None = None, limit_file_size: bool = False) -> subprocess.CompletedProcess:
    """`legsegnet ARGS` with its own model store (and temp folder); optionally unable to write large files."""
    env = {**os.environ, "LEGSEGNET_MODELS_DIR": str(store)}
    if tmp is not None:
        tmp.mkdir(exist_ok=True)
        env.update(TMPDIR=str(tmp), TEMP=str(tmp), TMP=str(tmp))

    def no_large_files() -> None:  # writing past the limit kills the process (SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))

    return subprocess.run(
        [sys.executable, "-m", "LegSegNetLib.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
        preexec_fn=no_large_files if limit_file_size else None,
    )


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def _files(root: Path) -> dict[str, int]:
    """Every file under root (hidden ones included) and its size."""
    return (
        {p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*") if p.is_file()}
        if root.exists()
        else {}
    )


def _zip_folder(folder: Path, archive: Path, extra: dict[str, int] | None = None) -> Path:
    """The model folder under model/ in a zip, plus entries of `extra` (name -> bytes of zeros)."""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, "model/" + path.relative_to(folder).as_posix())
        for name, size in (extra or {}).items():
            with zf.open(name, "w") as out:
                block = bytes(1 << 20)
                for start in range(0, size, len(block)):
                    out.write(block[: min(len(block), size - start)])
    return archive


def _understate_size(archive: Path, name: str, declared: int) -> None:
    """Make the zip's headers (central directory and local header) claim `declared` bytes for `name`."""
    data = bytearray(archive.read_bytes())
    encoded = name.encode()
    for signature, size_at, name_length_at, name_at in ((b"PK\x01\x02", 24, 28, 46), (b"PK\x03\x04", 22, 26, 30)):
        pos = data.find(signature)
        while pos != -1:
            length = struct.unpack_from("<H", data, pos + name_length_at)[0]
            if data[pos + name_at : pos + name_at + length] == encoded:
                struct.pack_into("<I", data, pos + size_at, declared)
            pos = data.find(signature, pos + 4)
    archive.write_bytes(bytes(data))
    with zipfile.ZipFile(archive) as zf:
        assert zf.getinfo(name).file_size == declared


def _hostile_copy(png_model: Path, folder: Path, attack: str, marker: Path) -> Path:
    """A copy of the real model whose plans.json would run `touch MARKER` when nnU-Net builds its network."""
    shutil.copytree(png_model, folder)
    plans = json.loads((folder / "plans.json").read_text())
    architecture = plans["configurations"]["2d"]["architecture"]
    if attack == "mock-network":
        # nnU-Net calls network.apply(network.initialize): with a MagicMock, that is os.system("touch ...")
        architecture.update(
            network_class_name="unittest.mock.MagicMock",
            arch_kwargs={"initialize": f"touch {marker}", "apply.side_effect": "os.system"},
            _kw_requires_import=["apply.side_effect"],
        )
    elif attack == "layer":
        # nnU-Net's own U-Net builds each activation as nonlin(**nonlin_kwargs): os.system(command=...)
        architecture["arch_kwargs"].update(nonlin="os.system", nonlin_kwargs={"command": f"touch {marker}"})
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))
    return folder


# ====================================================================== plans that would run code
@pytest.mark.parametrize(("attack", "named"), [("mock-network", "unittest.mock.MagicMock"), ("layer", "os.system")])
def test_plans_that_would_run_code_are_refused_at_install_and_at_load(tmp_path, png_model, attack, named):
    marker = tmp_path / "MARKER"
    hostile = _hostile_copy(png_model, tmp_path / "hostile", attack, marker)
    store = tmp_path / "store"
    ct = w.write_image(w.phantom_image()[0], tmp_path / "ct.nii.gz")

    line = _one_error_line(_cli("models", "install", hostile, "--name", "hostile", "--quiet", store=store))
    assert f"'{named}'" in line and "nothing from it was imported or run" in line
    if attack == "mock-network":
        line = _one_error_line(
            _cli("models", "install", _zip_folder(hostile, tmp_path / "hostile.zip"), "--quiet", store=store)
        )
        assert f"'{named}'" in line
    assert _files(store) == {}  # nothing installed, nothing left behind

    line = _one_error_line(
        _cli(
            "segment",
            ct,
            "-o",
            tmp_path / "out",
            "--engine",
            "nnunet",
            "--model",
            hostile,
            "--device",
            "cpu",
            "--quiet",
            store=store,
        )
    )
    assert f"'{named}'" in line
    if attack == "mock-network":
        # A model that reached the store without `models install` (copied by hand, or installed by an older
        # version) is checked when it is loaded: here it is the default that --engine auto picks.
        shutil.copytree(hostile, store / "hostile")
        line = _one_error_line(_cli("segment", ct, "-o", tmp_path / "out", "--device", "cpu", "--quiet", store=store))
        assert f"'{named}'" in line
    assert not marker.exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_plans_changed_after_the_folder_was_checked_are_refused_when_loaded(tmp_path, png_model):
    """The engine and fine-tuning read the plans through the same check, not trusting an earlier one."""
    from LegSegNetLib.annotation.nnunet_trainer import check_fine_tunable
    from LegSegNetLib.engines.nnunet import NnUNetEngine
    from LegSegNetLib.models.folder import inspect_model_folder
    from LegSegNetLib.models.store import ModelStore, resolve_model

    marker = tmp_path / "MARKER"
    folder = tmp_path / "model"
    shutil.copytree(png_model, folder)
    checked = inspect_model_folder(folder)
    shutil.rmtree(folder)
    _hostile_copy(png_model, folder, "layer", marker)  # swapped after the check
    with pytest.raises(InputError, match="'os.system' as the network's nonlin"):
        NnUNetEngine(checked, device="cpu", folds=[0])
    with pytest.raises(InputError, match="'os.system' as the network's nonlin"):
        check_fine_tunable(checked)  # what `train --from` runs on its base model
    with pytest.raises(InputError, match="'os.system' as the network's nonlin"):
        resolve_model(str(folder), ModelStore(tmp_path / "store"))  # --model FOLDER, train --from FOLDER
    assert not marker.exists()


def _plans_with(png_model: Path, change) -> dict:
    plans = json.loads((png_model / "plans.json").read_text())
    change(plans, plans["configurations"]["2d"])
    return plans


def _set_arch(key, value):
    return lambda plans, config: config["architecture"]["arch_kwargs"].__setitem__(key, value)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda p, c: c.__setitem__("preprocessor_name", "os"), "'os' as the preprocessor"),
        (
            lambda p, c: c.__setitem__("normalization_schemes", ["load_pickle"]),
            "'load_pickle' as a normalization scheme",
        ),
        (lambda p, c: c.__setitem__("resampling_fn_data", "load_pickle"), "'load_pickle' as the resampling_fn_data"),
        (
            lambda p, c: c.__setitem__("resampling_fn_probabilities", "rmtree"),
            "'rmtree' as the resampling_fn_probabilities",
        ),
        (lambda p, c: p.__setitem__("label_manager", "subprocess"), "'subprocess' as its label_manager"),
        (lambda p, c: p.__setitem__("image_reader_writer", "pickle"), "'pickle' as its image_reader_writer"),
        (
            lambda p, c: c["architecture"].__setitem__("network_class_name", "builtins.exec"),
            "'builtins.exec' as the network class",
        ),
        (_set_arch("conv_op", "torch.load"), "'torch.load' as the network's conv_op"),
        (_set_arch("block", "subprocess.Popen"), "'subprocess.Popen' as the network argument block"),
        (
            _set_arch("norm_op_kwargs", {"eps": 1e-5, "hook": ["os.system"]}),
            "'os.system' as the network argument norm_op_kwargs.hook[0]",
        ),
        (
            lambda p, c: c["architecture"]["_kw_requires_import"].append("missing"),
            "import the network argument 'missing'",
        ),
        (
            lambda p, c: p["configurations"].__setitem__(
                "3d_fullres", {"inherits_from": "2d", "preprocessor_name": "os"}
            ),
            "'os' as the preprocessor (configuration '3d_fullres')",
        ),
        (lambda p, c: c.update(architecture=None), "'architecture' (configuration '2d') is not an object"),
    ],
)
def test_every_name_nnunet_would_resolve_is_checked(tmp_path, png_model, change, named):
    folder = tmp_path / "model"
    shutil.copytree(png_model, folder)
    (folder / "plans.json").write_text(json.dumps(_plans_with(png_model, change)))
    with pytest.raises(InputError, match="plans.json of model 'model'") as caught:
        load_plans(folder)
    assert named in str(caught.value) and "\n" not in str(caught.value)


def test_legacy_plans_name_only_the_two_unets_nnunet_converts(tmp_path, png_model):
    plans = _plans_with(png_model, lambda p, c: c.update(UNet_class_name="PlainConvUNet"))
    del plans["configurations"]["2d"]["architecture"]
    plans_names.check_plans_names(plans, "old")
    plans["configurations"]["2d"]["UNet_class_name"] = "MagicMock"
    with pytest.raises(InputError, match="'MagicMock' as the network class"):
        plans_names.check_plans_names(plans, "old")


def test_the_allow_lists_are_exactly_what_nnunet_ships(png_model):
    """Each allowed name resolves, the way nnU-Net resolves it, to an object of its role, and nnU-Net ships
    no other object of that role (a newer nnU-Net that adds one fails here, so the list is kept current)."""
    import nnunetv2
    import torch
    from nnunetv2.imageio.base_reader_writer import BaseReaderWriter
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import ImageNormalization
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    def shipped(package: str, is_kind) -> set[str]:
        module = __import__(package, fromlist=["_"])
        names = set()
        for info in pkgutil.walk_packages(module.__path__, package + "."):
            for name, obj in vars(__import__(info.name, fromlist=["_"])).items():
                if is_kind(obj) and getattr(obj, "__module__", "").startswith(package):
                    names.add(name)
        return names

    def subclass_of(base):
        return lambda obj: inspect.isclass(obj) and issubclass(obj, base) and obj is not base

    def resampling_function(obj):  # the plans' resampling_fn_* are called as fn(data, new_shape, spacing, spacing)
        return inspect.isfunction(obj) and list(inspect.signature(obj).parameters)[:4] == [
            "data",
            "new_shape",
            "current_spacing",
            "new_spacing",
        ]

    roles = [
        (
            "nnunetv2.preprocessing",
            plans_names.PREPROCESSORS,
            lambda obj: inspect.isclass(obj) and issubclass(obj, DefaultPreprocessor),
        ),
        ("nnunetv2.preprocessing.normalization", plans_names.NORMALIZATION_SCHEMES, subclass_of(ImageNormalization)),
        ("nnunetv2.preprocessing.resampling", plans_names.RESAMPLING_FUNCTIONS, resampling_function),
        (
            "nnunetv2.utilities.label_handling",
            plans_names.LABEL_MANAGERS,
            lambda obj: inspect.isclass(obj) and issubclass(obj, LabelManager),
        ),
        ("nnunetv2.imageio", plans_names.IMAGE_READER_WRITERS, subclass_of(BaseReaderWriter)),
    ]
    for package, allowed, is_kind in roles:
        assert shipped(package, is_kind) == set(allowed), package
        folder = os.path.join(nnunetv2.__path__[0], *package.split(".")[1:])
        for name in allowed:  # nnU-Net's own lookup finds each of them
            assert is_kind(recursive_find_python_class(folder, name, package)), name

    for name in plans_names.NETWORK_CLASSES:
        # an older module path (residual_unet) nnU-Net finds by class name in the package: it is in unet.py now
        found = pydoc.locate(name) or pydoc.locate(
            "dynamic_network_architectures.architectures.unet." + name.split(".")[-1]
        )
        assert inspect.isclass(found) and issubclass(found, torch.nn.Module), name
    for name in plans_names.IMPORTABLE_ARGUMENTS:
        assert inspect.isclass(pydoc.locate(name)) and issubclass(pydoc.locate(name), torch.nn.Module), name
    # the real model's plans pass, as nnU-Net's planner wrote them
    assert (
        load_plans(png_model)["configurations"]["2d"]["architecture"]["network_class_name"]
        in plans_names.NETWORK_CLASSES
    )


def test_a_checkpoint_naming_something_else_than_a_trainer_gets_no_trainer():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    assert plans_names.find_trainer_class("os") is None  # an attribute of nnU-Net's trainer modules
    assert plans_names.find_trainer_class("os.system") is None
    assert plans_names.find_trainer_class("NoSuchTrainer") is None
    found = plans_names.find_trainer_class("nnUNetTrainerNoDeepSupervision")
    assert inspect.isclass(found) and issubclass(found, nnUNetTrainer)


# ====================================================================== archives
@pytest.fixture(scope="module")
def bomb_zip(png_model, tmp_path_factory) -> Path:
    """The real model beside 300 MB of zeros: the zip is well under 1 MB more than the model."""
    archive = _zip_folder(png_model, tmp_path_factory.mktemp("bomb") / "weights.zip", {"model/zeros.bin": ZEROS_BYTES})
    assert archive.stat().st_size < sum(_files(png_model).values()) + 2 * 1024**2
    return archive


def test_zip_with_a_huge_entry_beside_the_model_installs_the_model_only(tmp_path, png_model, bomb_zip):
    store, tmp = tmp_path / "store", tmp_path / "tmp"
    result = _cli("models", "install", bomb_zip, "--name", "tiny", store=store, tmp=tmp, limit_file_size=True)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])  # -25: killed writing a large file
    assert "not part of the model and were not extracted" in result.stderr
    installed = _files(store)
    assert not any("zeros" in name for name in installed) and not any(
        name.startswith(".install-") for name in installed
    )
    assert sum(installed.values()) < sum(_files(png_model).values()) + 1024**2
    assert _files(tmp) == {}
    # the model it installed is whole and runs
    ct = w.write_image(w.phantom_image()[0], tmp_path / "ct.nii.gz")
    run = _cli("segment", ct, "-o", tmp_path / "out", "--device", "cpu", "--quiet", store=store)
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["model"] == "tiny"


@pytest.mark.parametrize("lying_entry", ["model/fold_0/checkpoint_final.pth", "model/zeros.bin"])
def test_zip_whose_header_understates_an_entry(tmp_path, png_model, lying_entry):
    """A header that claims a few kB for 300 MB of zeros: a model file is refused after at most the claimed
    bytes, naming the zip; a file the model does not need is never opened, so the model installs."""
    store, tmp = tmp_path / "store", tmp_path / "tmp"
    model = tmp_path / "model"
    shutil.copytree(png_model, model)
    (model / "fold_0" / "checkpoint_final.pth").unlink()  # the lying entry takes its place
    archive = _zip_folder(model, tmp_path / "lying.zip", {lying_entry: ZEROS_BYTES})
    _understate_size(archive, lying_entry, 4096)
    result = _cli("models", "install", archive, "--name", "tiny", "--quiet", store=store, tmp=tmp, limit_file_size=True)
    if lying_entry.endswith(".pth"):
        assert str(archive) in _one_error_line(result)
        assert _files(store) == {}
    else:
        assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
        assert "tiny/fold_0/checkpoint_best.pth" in _files(store)
    assert max(_files(store).values(), default=0) < FILE_SIZE_LIMIT and _files(tmp) == {}


@pytest.mark.parametrize("content", ["empty", "no-plans"])
def test_zip_without_a_model_is_named_in_the_error(tmp_path, content):
    archive = tmp_path / "weights.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        if content == "no-plans":
            zf.writestr("model/readme.txt", "weights elsewhere")
    line = _one_error_line(_cli("models", "install", archive, "--quiet", store=tmp_path / "store"))
    assert f"'{archive}' holds no nnU-Net model" in line and ".install-" not in line
    assert _files(tmp_path / "store") == {}


def test_errors_about_an_unpacked_zip_name_the_zip_not_the_staging_folder(tmp_path, png_model):
    model = tmp_path / "model"
    shutil.copytree(png_model, model)
    (model / "dataset.json").unlink()
    archive = _zip_folder(model, tmp_path / "incomplete.zip")
    line = _one_error_line(_cli("models", "install", archive, "--quiet", store=tmp_path / "store"))
    assert "dataset.json is missing" in line and str(archive) in line and ".install-" not in line


def test_an_archive_yields_the_files_a_copied_folder_keeps(tmp_path, png_model):
    """One rule for both: the zip members chosen are the files the store keeps of a model folder."""
    from LegSegNetLib.models.archives import model_members
    from LegSegNetLib.models.store import collect_model_files

    folder = tmp_path / "copied"
    collect_model_files(png_model, folder, move=False)
    members = {PurePosixPath("model", name) for name in _files(png_model)}
    chosen = {p.relative_to("model").as_posix() for p in model_members(members)}
    assert chosen == set(_files(folder))
