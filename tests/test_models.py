"""The model store and nnU-Net model folders: validation, untrusted archives, downloads, the CLI.

Model folders are built from tiny real files: plans.json / dataset.json shaped like nnU-Net v2's and
checkpoints written by torch.save with the same keys and value types as nnU-Net's trainer (a real
state_dict and optimizer state, numpy floats in the log). Downloads go to a real HTTP server on
127.0.0.1 started in the test (plain http is accepted only to this computer); hub sources go to a local
imitation of the Hugging Face hub (tests/hub_imitation.py) through huggingface_hub.
"""

from __future__ import annotations

import copy
import hashlib
import http.server
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hub_imitation import LocalHub

from LegSegNetLib.core.errors import InputError, LegSegNetError
from LegSegNetLib.core.progress import Progress
from LegSegNetLib.models import checkpoints, hub
from LegSegNetLib.models.checkpoints import checkpoint_is_safe, load_checkpoint
from LegSegNetLib.models.folder import INPUT_HU, INPUT_PNG, METADATA_FILE, inspect_model_folder, load_plans
from LegSegNetLib.models.hub import parse_hf_source, plan_hf_download
from LegSegNetLib.models.store import MODELS_DIR_ENV, ModelStore, default_store_root, resolve_model

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
LABELS = {"background": 0, "SAT": 1, "SM": 2, "IAT": 3, "Bone": 4}


# ---------------------------------------------------------------------- model folders
def plans_json(null_spacing: bool = True, configurations: tuple[str, ...] = ("2d",), channels: int = 1) -> dict:
    two_d = {
        "data_identifier": "nnUNetPlans_2d",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 12,
        "patch_size": [192, 256],
        "median_image_size_in_voxels": [180.0, 230.0],
        "spacing": [None, None] if null_spacing else [1.0, 1.0],
        "normalization_schemes": ["ZScoreNormalization"] * channels,
        "use_mask_for_norm": [False] * channels,
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {
                "n_stages": 6,
                "features_per_stage": [32, 64, 128, 256, 512, 512],
                "conv_op": "torch.nn.modules.conv.Conv2d",
                "kernel_sizes": [[3, 3]] * 6,
                "strides": [[1, 1]] + [[2, 2]] * 5,
                "n_conv_per_stage": [2] * 6,
                "n_conv_per_stage_decoder": [2] * 5,
                "conv_bias": True,
                "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
                "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                "dropout_op": None,
                "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU",
                "nonlin_kwargs": {"inplace": True},
            },
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        },
        "batch_dice": True,
    }
    configs = {}
    for name in configurations:
        configs[name] = copy.deepcopy(two_d) if name == "2d" else {**copy.deepcopy(two_d), "patch_size": [64, 128, 128]}
    return {
        "dataset_name": "Dataset001_LegSegNet",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [999.0, 1.0, 1.0],
        "original_median_shape_after_transp": [1, 256, 256],
        "image_reader_writer": "NaturalImage2DIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": configs,
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {
                "max": 255.0,
                "mean": 120.3,
                "median": 121.0,
                "min": 0.0,
                "percentile_00_5": 20.0,
                "percentile_99_5": 230.0,
                "std": 40.1,
            }
        },
    }


def dataset_json(labels: dict | None = None, file_ending: str = ".png", channels: dict | None = None) -> dict:
    return {
        "channel_names": channels or {"0": "CT"},
        "labels": labels or dict(LABELS),
        "numTraining": 12,
        "file_ending": file_ending,
    }


def save_nnunet_checkpoint(path: Path, extra: dict | None = None) -> None:
    """A checkpoint with the keys and value types nnU-Net's trainer writes, from a tiny real network."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.InstanceNorm2d(4, affine=True),
        torch.nn.LeakyReLU(inplace=True),
        torch.nn.Conv2d(4, 5, 1),
    )
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    net(torch.randn(2, 1, 16, 16)).mean().backward()
    optimizer.step()
    checkpoint = {
        "network_weights": net.state_dict(),
        "optimizer_state": optimizer.state_dict(),
        "grad_scaler_state": None,
        "logging": {
            "mean_fg_dice": [np.float64(0.61)],
            "ema_fg_dice": [np.float64(0.61)],
            "dice_per_class_or_region": [[np.float64(0.7), np.float64(0.6), np.float64(0.3), np.float64(0.8)]],
            "train_losses": [np.float32(-0.42)],
            "val_losses": [np.float32(-0.40)],
            "lrs": [0.01],
            "epoch_start_timestamps": [time.time()],
            "epoch_end_timestamps": [time.time()],
        },
        "_best_ema": np.float64(0.61),
        "current_epoch": 1,
        "init_args": {
            "plans": plans_json(),
            "configuration": "2d",
            "fold": 0,
            "dataset_json": dataset_json(),
            "device": torch.device("cpu"),
        },
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": (0, 1),
    }
    checkpoint.update(extra or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pth"
    save_nnunet_checkpoint(path)
    return path.read_bytes()


def make_model(
    folder: Path,
    checkpoint_bytes: bytes,
    folds: dict | None = None,
    plans: dict | None = None,
    dataset: dict | None = None,
) -> Path:
    """A model folder in the published layout (plans.json, dataset.json, fold_N/checkpoint_*.pth)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans or plans_json(), indent=4))
    (folder / "dataset.json").write_text(json.dumps(dataset or dataset_json(), indent=4))
    for fold, names in (folds if folds is not None else {0: ("checkpoint_best.pth",)}).items():
        (folder / f"fold_{fold}").mkdir(exist_ok=True)
        for name in names:
            (folder / f"fold_{fold}" / name).write_bytes(checkpoint_bytes)
    return folder


def zip_tree(folder: Path, archive: Path, prefix: str = "model/") -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, prefix + path.relative_to(folder).as_posix())
    return archive


def snapshot(root: Path) -> list[tuple[str, int]]:
    """Every file and folder under the store, hidden ones included: 'unchanged' means equal snapshots."""
    if not root.exists():
        return []
    return sorted((p.relative_to(root).as_posix(), p.stat().st_size if p.is_file() else -1) for p in root.rglob("*"))


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def good_model(tmp_path, checkpoint_bytes) -> Path:
    return make_model(tmp_path / "LegSegNet" / "model", checkpoint_bytes)


# ---------------------------------------------------------------------- a real HTTP server
class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.server.requests.append(self.path)
        route = self.server.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        mode, body = route
        if mode == "hang":  # accepts the connection, never answers
            time.sleep(5)
            return
        if mode == "redirect":
            self.send_response(302)
            self.send_header("Location", body.decode())
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        if mode != "no-length":
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode in ("truncate", "no-length", "stall"):  # the server dies (or stalls) half-way through
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            if mode == "stall":
                time.sleep(5)
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True  # a hanging handler must not hold up the teardown
    httpd.routes = {}
    httpd.requests = []
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def serve(httpd, path: str, body: bytes, mode: str = "ok") -> str:
    httpd.routes[path] = (mode, body)
    return httpd.url + path


# ====================================================================== inspecting model folders
def test_inspect_published_layout(good_model):
    folder = inspect_model_folder(good_model)
    assert folder.path == good_model
    assert folder.name == "LegSegNet"  # the generic 'model' folder is named after its parent
    assert folder.configuration == "2d"
    assert dict(folder.folds) == {0: ("checkpoint_best.pth",)}
    assert folder.input_format == INPUT_PNG and folder.natural_image
    assert folder.num_input_channels == 1 and folder.file_ending == ".png"
    assert folder.checkpoints() == [(0, good_model / "fold_0" / "checkpoint_best.pth")]  # auto: best when no final
    assert folder.warnings == ()


def test_inspect_results_folder_picks_2d(tmp_path, checkpoint_bytes):
    dataset_dir = tmp_path / "Dataset001_LegSegNet"
    two_d = make_model(
        dataset_dir / "nnUNetTrainer__nnUNetPlans__2d",
        checkpoint_bytes,
        folds={0: ("checkpoint_best.pth", "checkpoint_final.pth"), 1: ("checkpoint_final.pth",)},
        dataset=dataset_json(file_ending=".nii.gz"),
        plans={**plans_json(), "image_reader_writer": "SimpleITKIO"},
    )
    make_model(
        dataset_dir / "nnUNetTrainer__nnUNetPlans__3d_fullres",
        checkpoint_bytes,
        plans=plans_json(configurations=("2d", "3d_fullres")),
    )
    folder = inspect_model_folder(dataset_dir)
    assert folder.path == two_d
    assert (folder.trainer, folder.plans_identifier) == ("nnUNetTrainer", "nnUNetPlans")
    assert folder.name == "Dataset001_LegSegNet"
    assert folder.input_format == INPUT_HU and not folder.natural_image
    assert folder.fold_ids == [0, 1]
    assert folder.checkpoints() == [
        (0, two_d / "fold_0/checkpoint_final.pth"),
        (1, two_d / "fold_1/checkpoint_final.pth"),
    ]
    assert folder.checkpoint_path(0, "best") == two_d / "fold_0/checkpoint_best.pth"
    with pytest.raises(InputError, match=r"fold 1 has no checkpoint_best.pth.*fold 1: checkpoint_final.pth"):
        folder.checkpoints([0, 1], "best")
    # The same model given by its nnU-Net results root (one dataset inside).
    assert inspect_model_folder(tmp_path).path == two_d


def test_default_checkpoint_follows_the_layout_and_installs_keep_it(tmp_path, checkpoint_bytes):
    """nnUNetv2_predict uses checkpoint_final of a results folder; the published layout ships checkpoint_best:
    each layout's own file is the default when every fold has both, the other one when it is all there is."""
    both = {0: ("checkpoint_best.pth", "checkpoint_final.pth")}
    published = make_model(tmp_path / "pub" / "model", checkpoint_bytes, folds=both)
    results = make_model(
        tmp_path / "Dataset001_X" / "nnUNetTrainer__nnUNetPlans__2d",
        checkpoint_bytes,
        folds=both,
        dataset=dataset_json(file_ending=".nii.gz"),
    )
    final_only = make_model(
        tmp_path / "Dataset002_Y" / "nnUNetTrainer__nnUNetPlans__2d",
        checkpoint_bytes,
        folds={0: ("checkpoint_final.pth",)},
        dataset=dataset_json(file_ending=".nii.gz"),
    )
    assert inspect_model_folder(published).checkpoint_path(0).name == "checkpoint_best.pth"
    assert inspect_model_folder(results).checkpoint_path(0).name == "checkpoint_final.pth"
    assert inspect_model_folder(final_only).checkpoint_path(0).name == "checkpoint_final.pth"
    assert inspect_model_folder(results).checkpoint_path(0, "best").name == "checkpoint_best.pth"
    with pytest.raises(InputError, match=r"fold 0 has no checkpoint_best.pth.*--checkpoint best\|final"):
        inspect_model_folder(final_only).checkpoint_path(0, "best")
    # installed, a results folder stays one (its trainer is recorded), so its default stays final
    store = ModelStore(tmp_path / "store")
    store.install(str(results), name="results")
    store.install(str(published), name="published")
    assert store.get("results").folder().checkpoint_path(0).name == "checkpoint_final.pth"
    assert store.get("published").folder().checkpoint_path(0).name == "checkpoint_best.pth"


def test_inspect_refuses_a_3d_configuration_folder(tmp_path, checkpoint_bytes):
    three_d = make_model(
        tmp_path / "Dataset001_X" / "nnUNetTrainer__nnUNetPlans__3d_fullres",
        checkpoint_bytes,
        plans=plans_json(configurations=("2d", "3d_fullres")),
    )
    with pytest.raises(InputError, match="'3d_fullres' configuration; LegSegNet runs the 2D nnU-Net"):
        inspect_model_folder(three_d)
    with pytest.raises(InputError, match="no 2d one"):
        inspect_model_folder(three_d.parent)


def test_missing_folds_and_checkpoints_are_named(tmp_path, checkpoint_bytes, good_model):
    with pytest.raises(InputError, match=r"has no fold 3 \(it has folds 0\).*--folds 0"):
        inspect_model_folder(good_model, folds=[3])
    with pytest.raises(InputError, match=r"fold 0 has no checkpoint_final.pth \(fold 0: checkpoint_best.pth\)"):
        inspect_model_folder(good_model, folds=[0], checkpoint="final")
    empty = make_model(tmp_path / "empty", checkpoint_bytes, folds={0: ()})
    with pytest.raises(InputError, match=r"has no checkpoint: expected fold_N/checkpoint_best.pth.*found fold_0"):
        inspect_model_folder(empty)
    with pytest.raises(InputError, match="is one fold of a model"):
        inspect_model_folder(good_model / "fold_0")
    (good_model / "dataset.json").unlink()
    with pytest.raises(InputError, match="dataset.json is missing"):
        inspect_model_folder(good_model)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ({"background": 0, "SM": 1, "SAT": 2, "IAT": 3, "Bone": 4}, "gives 'SM' the value 1, but LegSegNet's SM is 2"),
        ({"background": 0, "liver": 1, "spleen": 2}, "needs exactly background 0, SAT 1, SM 2, IAT 3, Bone 4"),
        ({"SAT": 1, "SM": 2, "IAT": 3, "Bone": 4}, "no background label 0"),
        ({"background": 0, "fat": [1, 3], "SM": 2, "IAT": 3, "Bone": 4}, "region-based"),
    ],
)
def test_label_mismatch_is_refused(tmp_path, checkpoint_bytes, labels, message):
    folder = make_model(tmp_path / "m", checkpoint_bytes, dataset=dataset_json(labels=labels))
    with pytest.raises(InputError, match=message):
        inspect_model_folder(folder)


def test_unrecognised_label_names_and_ignore_label_are_accepted(tmp_path, checkpoint_bytes):
    labels = {"background": 0, "class_a": 1, "muscle": 2, "class_c": 3, "bone": 4, "ignore": 5}
    folder = inspect_model_folder(make_model(tmp_path / "m", checkpoint_bytes, dataset=dataset_json(labels=labels)))
    assert len(folder.warnings) == 1 and "class_a, class_c" in folder.warnings[0]


def test_plans_and_dataset_must_agree(tmp_path, checkpoint_bytes):
    folder = make_model(tmp_path / "m", checkpoint_bytes, plans=plans_json(channels=2))
    with pytest.raises(InputError, match="plans.json and dataset.json of model 'm' disagree"):
        inspect_model_folder(folder)
    (folder / "plans.json").write_text(json.dumps(plans_json(configurations=("3d_fullres",))))
    with pytest.raises(InputError, match=r"no '2d' configuration \(it has 3d_fullres\)"):
        inspect_model_folder(folder)
    (folder / "plans.json").write_text('{"configurations": {"2d": ')
    with pytest.raises(InputError, match="plans.json of model 'm' is not valid JSON"):
        inspect_model_folder(folder)


def test_input_format_from_channel_names(tmp_path, checkpoint_bytes):
    plans = {**plans_json(), "image_reader_writer": "SimpleITKIO"}
    png = make_model(
        tmp_path / "a",
        checkpoint_bytes,
        plans=plans,
        dataset=dataset_json(file_ending=".nii.gz", channels={"0": "png"}),
    )
    assert inspect_model_folder(png).input_format == INPUT_PNG
    hu = make_model(tmp_path / "b", checkpoint_bytes, plans=plans, dataset=dataset_json(file_ending=".nii.gz"))
    assert inspect_model_folder(hu).input_format == INPUT_HU


def test_load_plans_fixes_null_spacing_in_memory_only(good_model):
    before = (good_model / "plans.json").read_bytes()
    plans = load_plans(good_model)
    assert plans["configurations"]["2d"]["spacing"] == [999.0, 999.0]
    assert (good_model / "plans.json").read_bytes() == before
    inspect_model_folder(good_model)
    assert (good_model / "plans.json").read_bytes() == before


# ====================================================================== checkpoints
class _RunsCode:
    """Unpickling this runs os.mkdir: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_real_nnunet_style_checkpoint_loads_weights_only(tmp_path):
    path = tmp_path / "checkpoint_final.pth"
    save_nnunet_checkpoint(path)
    # Plain weights_only refuses nnU-Net's numpy floats; our allowlist takes them, nothing else.
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(path, weights_only=True, map_location="cpu")
    assert checkpoint_is_safe(path)
    checkpoint = load_checkpoint(path)
    assert checkpoint["trainer_name"] == "nnUNetTrainer"
    assert checkpoint["init_args"]["configuration"] == "2d"
    assert checkpoint["logging"]["mean_fg_dice"][0] == pytest.approx(0.61)
    assert checkpoint["network_weights"]["3.weight"].shape == (5, 4, 1, 1)


def test_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "checkpoint_best.pth"
    save_nnunet_checkpoint(path, extra={"payload": _RunsCode(marker)})
    assert checkpoints.unsafe_checkpoint_globals(path) == ["posix.mkdir" if os.name == "posix" else "nt.mkdir"]
    assert checkpoint_is_safe(path) is False
    with pytest.raises(InputError, match="could run code when loaded"):
        load_checkpoint(path)
    assert not marker.exists()


def test_damaged_checkpoint_is_an_input_error(tmp_path, checkpoint_bytes):
    path = tmp_path / "checkpoint_best.pth"
    path.write_bytes(checkpoint_bytes[: len(checkpoint_bytes) // 2])
    with pytest.raises(InputError, match="damaged or not a PyTorch checkpoint"):
        checkpoint_is_safe(path)


# ====================================================================== the store
def test_store_root_from_env_and_platform_default(tmp_path, monkeypatch):
    monkeypatch.setenv(MODELS_DIR_ENV, str(tmp_path / "shared-store"))
    assert default_store_root() == tmp_path / "shared-store"
    assert ModelStore().root == tmp_path / "shared-store"
    assert ModelStore(tmp_path / "explicit").root == tmp_path / "explicit"
    monkeypatch.delenv(MODELS_DIR_ENV)
    if sys.platform.startswith("linux"):
        monkeypatch.delenv("XDG_DATA_HOME", raising=False)
        assert default_store_root() == Path.home() / ".local/share/legsegnet/models"
        monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
        assert default_store_root() == tmp_path / "xdg/legsegnet/models"
    # Inside 3D Slicer platformdirs may be missing; pip's own copy of it gives the same folder.
    expected = default_store_root()
    monkeypatch.setitem(sys.modules, "platformdirs", None)  # `import platformdirs` now fails
    with pytest.raises(ImportError):
        import platformdirs  # noqa: F401
    assert default_store_root() == expected


def test_install_folder_list_default_resolve_remove(tmp_path, good_model, checkpoint_bytes):
    store = ModelStore(tmp_path / "store")
    assert store.list() == [] and store.default() is None
    before = snapshot(good_model)
    first = store.install(good_model, training_round=2)
    assert snapshot(good_model) == before  # the user's folder is untouched
    assert first.name == "legsegnet" and first.round == 2 and first.input_format == INPUT_PNG
    assert first.sha256_of == "files" and first.folds == (0,)
    assert json.loads((first.path / METADATA_FILE).read_text())["source"] == str(good_model)

    other = make_model(
        tmp_path / "Dataset002_Mine" / "nnUNetTrainer__nnUNetPlans__2d",
        checkpoint_bytes,
        folds={0: ("checkpoint_final.pth",), 1: ("checkpoint_final.pth",)},
    )
    second = store.install(other.parent)
    assert second.name == "dataset002_mine" and second.folds == (0, 1)
    assert [i.name for i in store.list()] == ["legsegnet", "dataset002_mine"]
    assert store.default().name == "dataset002_mine"  # the newest, until one is marked
    store.set_default("legsegnet")
    assert store.default().name == "legsegnet"
    assert store.get("dataset002_mine").metadata["trainer"] == "nnUNetTrainer"

    resolved = resolve_model("dataset002_mine", store)
    assert resolved.path == store.root / "dataset002_mine" and resolved.fold_ids == [0, 1]
    assert resolved.describe()["source"] == str(other.parent)
    assert resolve_model(None, store).name == "legsegnet"
    assert resolve_model(str(good_model), store).path == good_model  # a path is used in place
    with pytest.raises(InputError, match="installed: legsegnet, dataset002_mine"):
        resolve_model("nope", store)

    with pytest.raises(InputError, match="already installed"):
        store.install(good_model)  # same default name
    store.remove("legsegnet")
    assert [i.name for i in store.list()] == ["dataset002_mine"]
    assert store.default().name == "dataset002_mine"
    with pytest.raises(InputError, match="no installed model named 'legsegnet'"):
        store.remove("legsegnet")
    assert not [p for p in store.root.iterdir() if p.name.startswith(".")]  # no staging or trash left


def test_install_with_files_checksum(tmp_path, good_model):
    store = ModelStore(tmp_path / "store")
    digest = ModelStore(tmp_path / "scratch").install(good_model).sha256
    with pytest.raises(InputError, match="checksum mismatch"):
        store.install(good_model, sha256="0" * 64)
    assert snapshot(store.root) == []
    assert store.install(good_model, sha256=digest.upper()).sha256 == digest
    with pytest.raises(InputError, match="64 hexadecimal digits"):
        store.install(good_model, name="x", sha256="abc")


def test_install_zip_from_http_server(tmp_path, server, good_model):
    archive = zip_tree(good_model, tmp_path / "LegSegNet-weights.zip")
    with zipfile.ZipFile(archive, "a") as zf:  # as macOS's Finder zips folders
        zf.writestr("__MACOSX/model/._plans.json", b"\0\5\26\7")
    url = serve(server, "/files/LegSegNet-weights.zip", archive.read_bytes())
    store = ModelStore(tmp_path / "store")
    progress = Progress()
    info = store.install(url, sha256=sha256_of(archive), progress=progress)
    assert info.name == "legsegnet-weights"
    assert info.source == url and info.sha256 == sha256_of(archive) and info.sha256_of == "archive"
    assert info.licence is None and info.round is None and info.input_format == INPUT_PNG
    assert info.installed_at.endswith("+00:00")
    assert sorted(p.relative_to(info.path).as_posix() for p in info.path.rglob("*") if p.is_file()) == [
        "dataset.json",
        "fold_0/checkpoint_best.pth",
        METADATA_FILE,
        "plans.json",
    ]
    assert (info.path / "fold_0/checkpoint_best.pth").read_bytes() == (
        good_model / "fold_0/checkpoint_best.pth"
    ).read_bytes()
    assert any(url in note for note in progress.notes)
    assert [p.name for p in store.root.iterdir()] == ["legsegnet-weights"]


def _evil_zip(path: Path, good_model: Path, evil: str) -> Path:
    zip_tree(good_model, path)
    with zipfile.ZipFile(path, "a") as zf:
        if evil == "dotdot":
            zf.writestr("model/../../escaped.txt", "gotcha")
        elif evil == "absolute":
            zf.writestr("/tmp/legsegnet-absolute.txt", "gotcha")
        elif evil == "symlink":
            info = zipfile.ZipInfo("model/fold_0/link")
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
        elif evil == "device":
            info = zipfile.ZipInfo("model/dev")
            info.create_system = 3
            info.external_attr = (stat.S_IFCHR | 0o666) << 16
            zf.writestr(info, "")
        elif evil == "backslash":
            zf.writestr("model\\..\\..\\escaped.txt", "gotcha")
    return path


@pytest.mark.parametrize(
    ("case", "error", "message"),
    [
        ("dotdot", InputError, r"climbs out of the target folder"),
        ("absolute", InputError, r"an absolute path"),
        ("symlink", InputError, r"is a symbolic link, not a file"),
        ("device", InputError, r"is a character device"),
        ("backslash", InputError, r"climbs out of the target folder"),
        ("checksum", InputError, r"checksum mismatch .* nothing was installed"),
        ("truncated", LegSegNetError, r"incomplete: received \d+ of \d+ bytes"),
        ("truncated-no-length", InputError, r"not a valid .zip archive"),
        ("missing-fold-files", InputError, r"has no checkpoint: expected fold_N/checkpoint_best.pth"),
        ("zip-bomb", InputError, r"would expand to more than"),
        ("not-found", InputError, r"HTTP 404"),
    ],
)
def test_bad_downloads_are_refused_and_leave_the_store_unchanged(
    tmp_path, server, good_model, checkpoint_bytes, case, error, message
):
    store = ModelStore(tmp_path / "store", max_uncompressed_bytes=10 * len(checkpoint_bytes))
    store.install(good_model, name="already-here")
    before = snapshot(store.root)
    archive = tmp_path / "weights.zip"
    sha = None
    mode = "ok"
    if case in ("dotdot", "absolute", "symlink", "device", "backslash"):
        _evil_zip(archive, good_model, case)
    elif case == "missing-fold-files":
        zip_tree(make_model(tmp_path / "nofolds", checkpoint_bytes, folds={0: ()}), archive)
    elif case == "zip-bomb":
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("model/plans.json", json.dumps(plans_json()))
            zf.writestr("model/fold_0/checkpoint_best.pth", b"\0" * (20 * len(checkpoint_bytes)))
    else:
        zip_tree(good_model, archive)
        sha = "0" * 64 if case == "checksum" else None
        mode = {"truncated": "truncate", "truncated-no-length": "no-length"}.get(case, "ok")
    url = (
        serve(server, "/weights.zip", archive.read_bytes(), mode)
        if case != "not-found"
        else server.url + "/nothing.zip"
    )
    with pytest.raises(error, match=message) as caught:
        store.install(url, name="new", sha256=sha)
    assert "\n" not in str(caught.value)
    assert snapshot(store.root) == before
    assert not (tmp_path / "escaped.txt").exists() and not Path("/tmp/legsegnet-absolute.txt").exists()


def test_only_https_or_loopback_http(tmp_path, server, good_model):
    store = ModelStore(tmp_path / "store")
    for url in ("http://example.com/model.zip", "ftp://127.0.0.1/model.zip", "file:///etc/passwd"):
        with pytest.raises(InputError, match="only https:// URLs are accepted"):
            store.install(url)
    # A redirect away from this computer over plain http is refused before it is followed.
    redirect = serve(server, "/moved.zip", b"http://example.com/model.zip", "redirect")
    with pytest.raises(InputError, match="only https:// URLs are accepted"):
        store.install(redirect, name="x")
    assert snapshot(store.root) == []


def test_network_failure_is_a_clear_error(tmp_path, server, good_model):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = ModelStore(tmp_path / "store", timeout_s=0.5)
    with pytest.raises(LegSegNetError, match=r"cannot reach 127.0.0.1 .*try again") as caught:
        store.install(f"http://127.0.0.1:{port}/model.zip")
    assert not isinstance(caught.value, InputError)  # exit status 1: not the user's input
    hang = serve(server, "/hang.zip", b"", "hang")
    with pytest.raises(LegSegNetError, match="did not answer in time"):
        store.install(hang)
    archive = zip_tree(good_model, tmp_path / "weights.zip")
    stall = serve(server, "/stall.zip", archive.read_bytes(), "stall")
    with pytest.raises(LegSegNetError, match=r"interrupted after \d+ bytes"):
        store.install(stall)
    assert snapshot(store.root) == []


def test_a_model_copied_into_the_store_by_hand_is_listed(tmp_path, checkpoint_bytes):
    store = ModelStore(tmp_path / "store")
    make_model(store.root / "handmade", checkpoint_bytes)
    (store.root / "notes").mkdir()  # not a model: ignored
    (info,) = store.list()
    assert (info.name, info.source, info.input_format, info.is_default) == (
        "handmade",
        "(copied into the store)",
        "png",
        True,
    )
    assert resolve_model("handmade", store).path == store.root / "handmade"


# ====================================================================== the Hugging Face hub
def test_hf_source_parsing():
    assert parse_hf_source("hf:GogoChen/LegSegNet") == ("GogoChen/LegSegNet", None)
    assert parse_hf_source("hf:GogoChen/LegSegNet@v1.0") == ("GogoChen/LegSegNet", "v1.0")
    assert parse_hf_source("hf:GogoChen/LegSegNet@refs/pr/1") == ("GogoChen/LegSegNet", "refs/pr/1")
    for bad in ("hf:LegSegNet", "hf:a/b/c", "hf:../x", "hf:GogoChen/LegSegNet@../x"):
        with pytest.raises(InputError, match="write hf:OWNER/REPO"):
            parse_hf_source(bad)


def test_hf_file_choice():
    published = [".gitattributes", "README.md", "plans.json", "dataset.json", "fold_0/checkpoint_best.pth"]
    assert plan_hf_download(published) == ("files", ["plans.json", "dataset.json", "fold_0/checkpoint_best.pth"])
    nested = [
        "README.md",
        "model/plans.json",
        "model/dataset.json",
        "model/fold_0/checkpoint_best.pth",
        "model/fold_0/checkpoint_latest.pth",
        "model/fold_0/debug.json",
        "model/fold_0/progress.png",
    ]
    assert plan_hf_download(nested) == (
        "files",
        ["model/plans.json", "model/dataset.json", "model/fold_0/checkpoint_best.pth"],
    )
    results = [
        f"D/nnUNetTrainer__nnUNetPlans__{c}/{f}"
        for c in ("3d_fullres", "2d")
        for f in ("plans.json", "dataset.json", "dataset_fingerprint.json", "fold_0/checkpoint_final.pth")
    ]
    kind, files = plan_hf_download(results)
    assert kind == "files" and all("__2d/" in f for f in files) and len(files) == 4
    assert plan_hf_download(["README.md", "LegSegNet.zip"]) == ("zip", ["LegSegNet.zip"])
    with pytest.raises(InputError, match="holds no nnU-Net 2D model"):
        plan_hf_download(["README.md", "plans.json"], "x/y")


@pytest.fixture()
def local_hub():
    """A local imitation of the Hugging Face hub (tests/hub_imitation.py; tests/test_hub.py tests more of it)."""
    with LocalHub() as hub_server:
        yield hub_server


def _publish(hub_server: LocalHub, good_model: Path, tamper: bool = False) -> str:
    files = {
        f"model/{p.relative_to(good_model).as_posix()}": p.read_bytes() for p in good_model.rglob("*") if p.is_file()
    }
    files.update({".gitattributes": b"*.pth filter=lfs\n", "README.md": b"# LegSegNet\n"})
    if tamper:  # the hub's listing gives another SHA-256 than the file it serves
        hub_server.tampered_listing.add("model/fold_0/checkpoint_best.pth")
    return hub_server.add_commit("GogoChen/LegSegNet", files, licence="cc-by-nc-4.0")


def test_hf_install_against_a_local_hub(tmp_path, local_hub, good_model, monkeypatch):
    commit = _publish(local_hub, good_model)
    monkeypatch.setenv(hub.HF_ENDPOINT_ENV, local_hub.url)
    store = ModelStore(tmp_path / "store", hf_cache_dir=tmp_path / "hf-cache")
    progress = Progress()
    info = store.install("hf:GogoChen/LegSegNet", progress=progress)
    assert info.name == "legsegnet" and info.licence == "CC BY-NC 4.0"
    assert info.metadata["licence_url"] == "https://creativecommons.org/licenses/by-nc/4.0/"
    assert info.metadata["hub_revision"] == commit and info.source == "hf:GogoChen/LegSegNet"
    assert any("CC BY-NC 4.0" in note and "non-commercial" in note for note in progress.notes)
    asked = local_hub.requests_for("GogoChen/LegSegNet")
    assert asked[0].path == "/api/models/GogoChen/LegSegNet"
    downloads = [r.path for r in asked if "/resolve/" in r.path]
    assert downloads and all(f"/resolve/{commit}/" in path for path in downloads)  # pinned to the listed commit
    assert not any("README" in path or "gitattributes" in path for path in downloads)
    folder = resolve_model("legsegnet", store)
    assert folder.natural_image and folder.licence == "CC BY-NC 4.0"
    assert (folder.path / "fold_0/checkpoint_best.pth").read_bytes() == (
        good_model / "fold_0/checkpoint_best.pth"
    ).read_bytes()


def test_hf_download_not_matching_the_hub_checksum_is_refused(tmp_path, local_hub, good_model):
    _publish(local_hub, good_model, tamper=True)
    store = ModelStore(tmp_path / "store", hf_endpoint=local_hub.url, hf_cache_dir=tmp_path / "hf-cache")
    with pytest.raises(LegSegNetError, match="does not match the hub's checksum"):
        store.install("hf:GogoChen/LegSegNet")
    assert snapshot(store.root) == []


# ====================================================================== the command line
def _cli(*args: str, store: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, MODELS_DIR_ENV: str(store)}
    return subprocess.run(
        [sys.executable, "-m", "LegSegNetLib.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )


def test_cli_models_list_install_remove(tmp_path, server, good_model):
    store = tmp_path / "store"
    archive = zip_tree(good_model, tmp_path / "weights.zip")
    url = serve(server, "/weights.zip", archive.read_bytes())

    empty = _cli("models", "list", store=store)
    assert empty.returncode == 0 and "no models installed" in empty.stdout

    refused = _cli("models", "install", url, "--sha256", "1" * 64, store=store)
    assert refused.returncode == 2
    assert refused.stderr.splitlines()[-1].startswith("error: checksum mismatch")
    assert refused.stderr.count("error:") == 1 and "Traceback" not in refused.stderr
    assert snapshot(store) == []

    done = _cli("models", "install", url, "--name", "calf", "--sha256", sha256_of(archive), "--quiet", store=store)
    assert done.returncode == 0, done.stderr
    assert "installed 'calf'" in done.stdout and sha256_of(archive) in done.stdout

    listed = _cli("models", "list", "--json", store=store)
    assert listed.returncode == 0
    (entry,) = json.loads(listed.stdout)["models"]
    assert (entry["name"], entry["default"], entry["input_format"], entry["folds"]) == ("calf", True, "png", ["0"])
    table = _cli("models", "list", store=store)
    assert table.stdout.splitlines()[1].startswith("calf") and url in table.stdout

    assert _cli("models", "remove", "calf", store=store).returncode == 0
    again = _cli("models", "remove", "calf", store=store)
    assert again.returncode == 2 and again.stderr.startswith("error: no installed model named 'calf'")
    missing = _cli("models", store=store)
    assert missing.returncode == 2 and missing.stderr.startswith("error: ")
    assert [p for p in store.iterdir()] == []
