"""`hf:OWNER/REPO[@REVISION]` through huggingface_hub, against a local imitation of the hub (tests/hub_imitation.py).

The hub is a real HTTP server on 127.0.0.1 started by each test and stopped in a `finally`; HF_ENDPOINT points
huggingface_hub at it (the internet is never used). Every test has its own Hugging Face cache and model store.
The model is tiny but real: plans.json and dataset.json as nnU-Net writes them, checkpoints saved by torch.save
with the keys of nnU-Net's trainer (tests/test_models.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hub_imitation import LocalHub  # noqa: E402
from test_models import dataset_json, make_model, save_nnunet_checkpoint, snapshot  # noqa: E402

from LegSegNetLib.core.errors import InputError, LegSegNetError  # noqa: E402
from LegSegNetLib.core.progress import Progress  # noqa: E402
from LegSegNetLib.models.folder import METADATA_FILE  # noqa: E402
from LegSegNetLib.models.store import ModelStore  # noqa: E402

torch = pytest.importorskip("torch")
pytest.importorskip("huggingface_hub")

ROOT = Path(__file__).resolve().parents[1]
REPO = "GogoChen/LegSegNet"
CHECKPOINT = "model/fold_0/checkpoint_best.pth"
HF_CHUNK = 10 * 1024 * 1024  # huggingface_hub writes a download in chunks of this size (constants.DOWNLOAD_CHUNK_SIZE)


@pytest.fixture()
def hub():
    with LocalHub() as local:
        yield local


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pth"
    save_nnunet_checkpoint(path)
    return path.read_bytes()


def repo_files(tmp: Path, checkpoint: bytes, trained_on: int = 12) -> dict[str, bytes]:
    """A hub repository as the published one is laid out: the model folder beside files it does not need."""
    model = make_model(tmp / f"model-{trained_on}", checkpoint, dataset={**dataset_json(), "numTraining": trained_on})
    files = {f"model/{p.relative_to(model).as_posix()}": p.read_bytes() for p in model.rglob("*") if p.is_file()}
    files.update(
        {
            "README.md": b"---\nlicense: cc-by-nc-4.0\n---\n# LegSegNet\n",
            ".gitattributes": b"*.pth filter=lfs\n",
            "model/fold_0/checkpoint_latest.pth": checkpoint,
            "model/fold_0/progress.png": b"\x89PNG not needed",
        }
    )
    return files


def _cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "LegSegNetLib.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=ROOT,
        timeout=300,
    )


def _one_error_line(result: subprocess.CompletedProcess, status: int) -> str:
    assert result.returncode == status, (result.returncode, result.stderr[-2000:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


# ====================================================================== revisions
def test_a_pinned_revision_installs_that_commits_files_and_only_the_models(tmp_path, hub, checkpoint_bytes):
    first = repo_files(tmp_path, checkpoint_bytes, trained_on=12)
    second = repo_files(tmp_path, checkpoint_bytes, trained_on=99)
    tagged = hub.add_commit(REPO, first, refs=("v1.0",), licence="cc-by-nc-4.0")
    newest = hub.add_commit(REPO, second, refs=("main",))
    store = ModelStore(tmp_path / "store", hf_endpoint=hub.url, hf_cache_dir=tmp_path / "hf-cache")
    progress = Progress()

    info = store.install(f"hf:{REPO}@v1.0", progress=progress)
    assert info.metadata["hub_revision"] == tagged and info.source == f"hf:{REPO}@v1.0"
    assert (info.path / "dataset.json").read_bytes() == first["model/dataset.json"]
    assert info.licence == "CC BY-NC 4.0" and any("non-commercial" in note for note in progress.notes)
    asked = hub.requests_for(REPO)
    assert asked[0].path == f"/api/models/{REPO}/revision/v1.0"  # the revision is resolved ...
    downloads = [r.path for r in asked if "/resolve/" in r.path]
    assert downloads and all(f"/resolve/{tagged}/" in path for path in downloads)  # ... then pinned to its commit
    fetched = {path.split(f"/resolve/{tagged}/", 1)[1] for path in downloads}
    assert fetched == {"model/plans.json", "model/dataset.json", CHECKPOINT}  # allow_patterns: the model's files only
    assert sorted(p.relative_to(info.path).as_posix() for p in info.path.rglob("*") if p.is_file()) == [
        "dataset.json",
        "fold_0/checkpoint_best.pth",
        METADATA_FILE,
        "plans.json",
    ]

    by_commit = store.install(f"hf:{REPO}@{newest}", name="newest")
    assert by_commit.metadata["hub_revision"] == newest
    assert (by_commit.path / "dataset.json").read_bytes() == second["model/dataset.json"]

    before = snapshot(store.root)
    with pytest.raises(InputError, match="has no such revision"):
        store.install(f"hf:{REPO}@v9", name="nothing")
    with pytest.raises(InputError, match="was not found on 127.0.0.1"):
        store.install("hf:GogoChen/Missing", name="nothing")
    assert snapshot(store.root) == before


# ====================================================================== a dropped connection
def test_a_dropped_connection_is_resumed_where_it_stopped(tmp_path, hub):
    """huggingface_hub retries a download whose connection drops, asking with a Range header for the rest. It
    resumes after the last chunk it wrote (chunks of 10 MiB), so the checkpoint here is larger than two chunks
    and the hub cuts the connection after half of it: the retry must ask for the bytes after 10 MiB, not 0."""
    big = tmp_path / "big.pth"
    save_nnunet_checkpoint(big, extra={"padding": torch.zeros(6_500_000)})  # about 26 MB, a real checkpoint
    data = big.read_bytes()
    assert len(data) > 2 * HF_CHUNK
    hub.add_commit(REPO, repo_files(tmp_path, data))
    hub.cut_first_download.add(CHECKPOINT)
    store = ModelStore(tmp_path / "store", hf_endpoint=hub.url, hf_cache_dir=tmp_path / "hf-cache")
    progress = Progress()

    info = store.install(f"hf:{REPO}", progress=progress)
    assert (info.path / "fold_0/checkpoint_best.pth").read_bytes() == data
    first, retry = hub.downloads_of(CHECKPOINT)
    assert first.range is None
    resumed_at = len(data) // 2 // HF_CHUNK * HF_CHUNK  # the last whole chunk before the cut
    assert resumed_at > 0 and retry.range == f"bytes={resumed_at}-"
    assert hub.bytes_sent[CHECKPOINT] == len(data) // 2 + len(data) - resumed_at < 2 * len(data)  # continued
    assert any("peer closed connection" in note for note in progress.notes)  # said, as a note, not on stderr
    assert progress.stage_name == "checking"


def test_a_failed_install_leaves_the_store_unchanged_and_a_rerun_fetches_only_what_is_missing(
    tmp_path, hub, checkpoint_bytes
):
    hub.add_commit(REPO, repo_files(tmp_path, checkpoint_bytes))
    hub.failing.add(CHECKPOINT)
    store = ModelStore(tmp_path / "store", hf_endpoint=hub.url, hf_cache_dir=tmp_path / "hf-cache")
    with pytest.raises(LegSegNetError, match="answered HTTP 500 for hf:GogoChen/LegSegNet; try again later"):
        store.install(f"hf:{REPO}")
    assert snapshot(store.root) == []

    hub.failing.clear()
    before = len(hub.requests)
    store.install(f"hf:{REPO}")
    again = [
        r.path.rsplit("/resolve/", 1)[1] for r in hub.requests[before:] if r.method == "GET" and "/resolve/" in r.path
    ]
    assert [path.split("/", 1)[1] for path in again] == [CHECKPOINT]  # plans.json, dataset.json: from the cache


# ====================================================================== HF_HUB_OFFLINE and the cache
def test_offline_installs_from_the_cache_and_checks_it(tmp_path, hub, checkpoint_bytes):
    commit = hub.add_commit(REPO, repo_files(tmp_path, checkpoint_bytes), refs=("main", "v1.0"))
    store = ModelStore(tmp_path / "store", hf_endpoint=hub.url, hf_cache_dir=tmp_path / "hf-home/hub")
    store.install(f"hf:{REPO}@v1.0")
    store.remove("legsegnet")
    hub.stop()  # from here on nothing answers at the hub's address
    asked = len(hub.requests)
    # HF_HUB_OFFLINE is read when huggingface_hub is imported: the real command line, in a process of its own.
    env = {
        "LEGSEGNET_MODELS_DIR": str(store.root),
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_ENDPOINT": hub.url,
        "HF_HUB_OFFLINE": "1",
    }

    offline = _cli("models", "install", f"hf:{REPO}@v1.0", env=env)
    assert offline.returncode == 0, offline.stderr
    assert "HF_HUB_OFFLINE is set: installing hf:GogoChen/LegSegNet@v1.0" in offline.stderr
    installed = store.get("legsegnet")
    assert installed.metadata["hub_revision"] == commit and installed.licence == "CC BY-NC 4.0"  # the published one's
    assert installed.metadata["hub_from_cache"] is True
    assert (installed.path / "fold_0/checkpoint_best.pth").read_bytes() == checkpoint_bytes
    assert len(hub.requests) == asked

    # Not in the cache: one line, exit status 1 (no bad input), the store unchanged.
    before = snapshot(store.root)
    missing = _cli("models", "install", "hf:GogoChen/Other", "--quiet", env=env)
    line = _one_error_line(missing, 1)
    assert "HF_HUB_OFFLINE is set and hf:GogoChen/Other is not in the Hugging Face cache" in line
    assert snapshot(store.root) == before

    # Without HF_HUB_OFFLINE a hub that cannot be reached falls back to the cache too, as huggingface_hub does.
    progress = Progress()
    assert store.install(f"hf:{REPO}@v1.0", name="again", progress=progress).metadata["hub_revision"] == commit
    assert any("cannot reach 127.0.0.1" in note and "from the Hugging Face cache" in note for note in progress.notes)

    # The cache is checked, not trusted: a cached checkpoint that no longer matches its content address is refused.
    cached = next((tmp_path / "hf-home/hub").glob(f"models--GogoChen--LegSegNet/snapshots/*/{CHECKPOINT}"))
    cached.resolve().write_bytes(checkpoint_bytes[:-1] + bytes([checkpoint_bytes[-1] ^ 1]))
    before = snapshot(store.root)
    with pytest.raises(LegSegNetError, match="does not match the hub's checksum"):
        store.install(f"hf:{REPO}@v1.0", name="damaged")
    assert snapshot(store.root) == before


# ====================================================================== tokens
def test_a_wrong_token_is_one_error_line_and_the_right_one_is_sent(tmp_path, checkpoint_bytes, monkeypatch):
    with LocalHub(token="hf_right_token") as hub:
        hub.add_commit(REPO, repo_files(tmp_path, checkpoint_bytes))
        store = tmp_path / "store"
        env = {"LEGSEGNET_MODELS_DIR": str(store), "HF_HOME": str(tmp_path / "hf-home"), "HF_ENDPOINT": hub.url}
        refused = _cli("models", "install", f"hf:{REPO}", "--quiet", env={**env, "HF_TOKEN": "hf_wrong_token"})
        line = _one_error_line(refused, 2)
        assert "refused access to hf:GogoChen/LegSegNet (HTTP 401)" in line
        assert "HF_TOKEN" in line and "hf auth login" in line
        assert snapshot(store) == []
        asked = hub.requests_for(REPO)
        assert asked and all(r.authorization == "Bearer hf_wrong_token" for r in asked)

        # huggingface_hub reads HF_TOKEN when it sends a request: the right one, in this process, is accepted.
        monkeypatch.setenv("HF_TOKEN", "hf_right_token")
        store_here = ModelStore(store, hf_endpoint=hub.url, hf_cache_dir=tmp_path / "hf-home/hub")
        assert store_here.install(f"hf:{REPO}").folds == (0,)
        assert (store / "legsegnet" / "fold_0/checkpoint_best.pth").read_bytes() == checkpoint_bytes
