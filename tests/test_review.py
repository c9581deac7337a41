"""Review of sampled slices (model-in-the-loop annotation): sampling, state, and its life in a saved scene.

- sample_slices: K distinct slices, one per equal stratum of the range, uniform inside each stratum,
  reproducible from the seed, K limited to the paper's 1-50;
- ReviewState: marking, next unreviewed slice, extra slices, attribute round trip, damaged attributes;
- AnnotationLogic on real MRML (slicer-core): the review range comes from the segmentation run, the state is
  kept on the segmentation node, a slice view jumps to the slice, and the state survives saving the scene
  as .mrb and loading it again with Slicer's own storage nodes.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LegSegNetLib.annotation import review
from LegSegNetLib.annotation.review import ReviewState, sample_slices
from LegSegNetLib.core.errors import InputError


# ---------------------------------------------------------------------- sampling
@pytest.mark.parametrize("first, last, k", [(0, 29, 3), (5, 104, 7), (10, 12, 3), (0, 0, 1), (3, 60, 50)])
def test_one_distinct_slice_in_each_equal_stratum(first, last, k):
    n = last - first + 1
    for seed in range(40):
        chosen = sample_slices(first, last, k, seed)
        assert len(chosen) == min(k, n) == len(set(chosen))
        assert all(first <= s <= last for s in chosen)
        if k < n:
            bounds = [first + (s * n) // k for s in range(k + 1)]  # stratum s: slices bounds[s] .. bounds[s+1]-1
            strata = [max(i for i in range(k) if bounds[i] <= s) for s in chosen]
            assert sorted(strata) == list(range(k))
            assert max(np.diff(bounds)) - min(np.diff(bounds)) <= 1  # equal lengths, up to one slice


def test_every_slice_of_a_stratum_is_equally_likely_and_the_seed_reproduces_a_draw():
    counts = np.zeros(30, dtype=int)
    for seed in range(3000):
        for s in sample_slices(0, 29, 3, seed):
            counts[s] += 1
    assert counts.sum() == 9000
    assert counts.min() > 220 and counts.max() < 380, counts  # expected 300 per slice
    assert sample_slices(0, 29, 3, 11) == sample_slices(0, 29, 3, 11)
    assert len({tuple(sample_slices(0, 29, 3, seed)) for seed in range(20)}) > 10


def test_more_slices_asked_than_the_range_holds_gives_every_slice():
    assert sample_slices(4, 6, 10, 0) == [4, 5, 6]


@pytest.mark.parametrize("k", [0, 51, -3, 2.5, "three"])
def test_k_outside_1_to_50_is_refused(k):
    with pytest.raises(InputError, match="between 1 and 50"):
        sample_slices(0, 99, k)


def test_an_empty_range_is_refused():
    with pytest.raises(InputError, match="empty or reversed"):
        sample_slices(10, 5, 3)


# ---------------------------------------------------------------------- state
def test_marking_walks_through_the_sample_and_counts_what_is_done():
    state = ReviewState.start(0, 29, 3, seed=4)
    assert state.total == 3 and state.done == 0 and not state.complete
    first, second, third = state.slices
    assert state.next_unreviewed() == first
    state = state.mark(second)
    assert state.next_unreviewed(after=first) == third
    assert state.next_unreviewed(after=third) == first  # wraps around
    state = state.mark(first).mark(third)
    assert state.complete and state.done == 3 and state.next_unreviewed() is None
    assert "3 of 3 slices reviewed" in state.summary()


def test_an_extra_corrected_slice_joins_the_sample_and_unmarking_withdraws_the_export():
    state = ReviewState.start(10, 40, 2, seed=0)
    extra = next(s for s in range(10, 41) if s not in state.slices)
    state = state.mark(extra)
    assert extra in state.slices and extra in state.reviewed and state.total == 3
    state = state.mark_exported([extra], "/data/set")
    assert state.exported == (extra,)
    state = state.mark(extra, reviewed=False)
    assert extra not in state.reviewed and state.exported == ()
    with pytest.raises(InputError, match="outside the reviewed range"):
        state.mark(41)


def test_attributes_round_trip_and_damaged_ones_are_reported():
    state = ReviewState.start(2, 50, 5, seed=9).mark(2).mark_exported([2], "/x")
    attributes = state.to_attributes()
    assert all(k.startswith(review.ATTRIBUTE_PREFIX) and isinstance(v, str) for k, v in attributes.items())
    assert ReviewState.from_attributes(attributes.get) == state
    assert ReviewState.from_attributes({}.get) is None
    broken = dict(attributes, **{review.ATTRIBUTE_PREFIX + "Slices": "3,x"})
    with pytest.raises(InputError, match="damaged"):
        ReviewState.from_attributes(broken.get)
    inconsistent = dict(attributes, **{review.ATTRIBUTE_PREFIX + "Reviewed": "2,49"})
    with pytest.raises(InputError, match="inconsistent"):
        ReviewState.from_attributes(inconsistent.get)


# ---------------------------------------------------------------------- in a MRML scene
slicer = pytest.importorskip("slicer")

from LegSegNetLib.phantom import make_leg_phantom  # noqa: E402
from LegSegNetLib.slicer_logic import scene as slicer_io  # noqa: E402
from LegSegNetLib.slicer_logic.annotation_logic import AnnotationLogic  # noqa: E402


def _scene_with_segmentation(range_text: str | None = "2:12"):
    scene = slicer.vtkMRMLScene()
    phantom = make_leg_phantom(shape=(16, 64, 80), seed=2)
    volume, labels = phantom.to_volume()
    volume_node = slicer_io.node_volume_from_image(scene, volume.image, "calf")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "calf segmentation")
    slicer_io.fill_segmentation(segmentation, volume_node, sitk.GetArrayFromImage(labels), 0)
    if range_text:
        segmentation.SetAttribute("LegSegNet.Slices", range_text)
    return scene, volume_node, segmentation, labels


def _with_io_manager(scene, cache: Path):
    """Slicer's application gives every scene a data I/O manager; .mrb reading needs its cache folder."""
    cache.mkdir(exist_ok=True)
    manager, cache_manager = slicer.vtkDataIOManager(), slicer.vtkCacheManager()
    cache_manager.SetRemoteCacheDirectory(str(cache))
    manager.SetCacheManager(cache_manager)
    scene.SetDataIOManager(manager)
    return scene


def test_review_range_comes_from_the_segmentation_run_and_the_state_lives_on_the_node():
    scene, volume_node, segmentation, _ = _scene_with_segmentation("2:12")
    logic = AnnotationLogic(python=["unused"])
    assert logic.reviewState(segmentation) is None
    assert "Sample slices" in logic.reviewSummary(segmentation)
    with pytest.raises(InputError, match="Sample slices first"):
        logic.markReviewed(segmentation, 3)
    state = logic.startReview(segmentation, volume_node, slicesPerScan=4, seed=1)
    assert (state.first, state.last, state.total) == (2, 12, 4) and all(2 <= s <= 12 for s in state.slices)
    assert segmentation.GetAttribute(review.ATTRIBUTE_PREFIX + "Slices") == ",".join(map(str, state.slices))
    state = logic.markReviewed(segmentation, state.slices[0])
    assert logic.reviewState(segmentation).reviewed == (state.slices[0],)
    assert logic.nextUnreviewedSlice(segmentation) == state.slices[1]
    assert logic.reviewSummary(segmentation).startswith("1 of 4 slices reviewed")
    # without a stored range the whole volume is reviewed
    scene2, volume_node2, segmentation2, _ = _scene_with_segmentation(None)  # the scene kept: nodes live in it
    assert logic.startReview(segmentation2, volume_node2).last == 15


def test_jumping_shows_the_slice_in_an_axial_view():
    scene, volume_node, segmentation, _ = _scene_with_segmentation()
    slice_node = scene.AddNewNodeByClass("vtkMRMLSliceNode")  # a new slice node shows an axial plane
    normal = [slice_node.GetSliceToRAS().GetElement(r, 2) for r in range(3)]
    assert normal == [0.0, 0.0, 1.0]
    logic = AnnotationLogic(python=["unused"])
    for index in (0, 7, 15):
        ras = logic.jumpToSlice(volume_node, index, slice_node)
        assert slice_node.GetSliceOffset() == pytest.approx(ras[2])
        assert slicer_io.slice_index_at_ras(volume_node, ras) == index


def test_review_state_survives_saving_and_loading_the_scene_as_mrb(tmp_path):
    scene, volume_node, segmentation, labels = _scene_with_segmentation("2:12")
    logic = AnnotationLogic(python=["unused"])
    state = logic.startReview(segmentation, volume_node, slicesPerScan=3, seed=7)
    state = logic.markReviewed(segmentation, state.slices[1])
    state = logic.markReviewed(segmentation, 12 if 12 not in state.slices else 11)  # an extra slice
    for node in (volume_node, segmentation):
        node.AddDefaultStorageNode()  # as Slicer's Save dialog does
    _with_io_manager(scene, tmp_path / "cache")
    scene.SetRootDirectory(str(tmp_path))
    assert scene.WriteToMRB(str(tmp_path / "review.mrb"))
    assert any(n.endswith(".seg.nrrd") for n in zipfile.ZipFile(tmp_path / "review.mrb").namelist())

    loaded = _with_io_manager(slicer.vtkMRMLScene(), tmp_path / "cache2")
    assert loaded.ReadFromMRB(str(tmp_path / "review.mrb"))
    segmentation2 = loaded.GetFirstNodeByClass("vtkMRMLSegmentationNode")
    volume2 = loaded.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
    assert logic.reviewState(segmentation2) == state
    # the segments came back too, so the reviewed slices can be exported from the reloaded scene
    assert np.array_equal(
        slicer_io.labels_from_segmentation(segmentation2, volume2, visible_only=False), sitk.GetArrayFromImage(labels)
    )
    assert logic.nextUnreviewedSlice(segmentation2) == state.unreviewed()[0]


def test_reviewed_slices_go_to_the_training_set_with_their_current_labels(tmp_path):
    from LegSegNetLib.annotation.manifest import load_dataset

    scene, volume_node, segmentation, labels = _scene_with_segmentation("2:12")
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Anonymous")
    sh.SetItemAttribute(patient, "DICOM.PatientID", "PSEUDO-17")  # as Slicer's DICOM import sets it
    sh.CreateItem(patient, volume_node)
    logic = AnnotationLogic(python=["unused"])
    state = logic.startReview(segmentation, volume_node, slicesPerScan=3, seed=2)
    with pytest.raises(InputError, match="no slice is marked reviewed"):
        logic.addReviewedSlices(segmentation, volume_node, tmp_path / "set")
    first, second = state.slices[:2]
    logic.markReviewed(segmentation, first)
    logic.markReviewed(segmentation, second)
    result = logic.addReviewedSlices(segmentation, volume_node, tmp_path / "set", trainingRound=1, inputFormat="hu")
    assert result.added == sorted([first, second]) and result.patient == "PSEUDO-17"
    assert logic.reviewState(segmentation).exported == tuple(sorted([first, second]))
    assert "2 added to the training set" in logic.reviewSummary(segmentation)
    manifest = load_dataset(tmp_path / "set")
    assert {e["source"] for e in manifest.entries} == {"slicer:calf"}
    volume = slicer_io.ct_volume_from_node(volume_node)
    exact = volume.slab_from_image(labels)
    for entry in manifest.entries:
        exported = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "set" / entry["label"])))
        assert np.array_equal(exported, exact[entry["slice_index"]])

    # the annotator corrects one slice further after the export: adding again replaces only that slice
    labels_kji = slicer_io.labels_from_segmentation(segmentation, volume_node, visible_only=False)
    edited = slicer_io.labels_slab(volume, labels_kji)
    edited[first][edited[first] == 1] = 2
    slicer_io.fill_segmentation(
        segmentation, volume_node, np.ascontiguousarray(sitk.GetArrayFromImage(volume.labels_to_image(edited))), 0
    )
    again = logic.addReviewedSlices(segmentation, volume_node, tmp_path / "set", trainingRound=1)
    assert again.replaced == [first] and again.unchanged == [second] and again.total_cases == 2


def test_training_needs_a_training_set_and_reports_interrupted_runs(tmp_path):
    logic = AnnotationLogic(python=["unused"])
    with pytest.raises(InputError, match="no training set folder chosen"):
        logic.trainAsync("")
    with pytest.raises(InputError, match="does not exist"):
        logic.trainAsync(tmp_path / "missing")
    assert logic.interruptedRuns("") == [] and logic.interruptedRuns(tmp_path) == []
    assert logic.expectedTrainingSeconds(None) is None  # from scratch: unknown until nnU-Net has planned


def test_an_nnunet_run_leaves_its_slice_uncertainty_on_the_segmentation_for_the_uncertain_review(tmp_path):
    """Real worker runs (the suite's tiny nnU-Net model, then the threshold engine) into one segmentation: the
    nnU-Net run's profile.csv uncertainty becomes the node's attribute, the uncertain review samples from it, and
    a run without probabilities clears it."""
    pytest.importorskip("nnunetv2")
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import nnunet_fixtures

    from LegSegNetLib.annotation.review import read_results_profile
    from LegSegNetLib.slicer_logic.logic import LegSegNetLogic

    scene = slicer.vtkMRMLScene()
    phantom = make_leg_phantom(shape=(12, 192, 256), seed=4)
    volume, _ = phantom.to_volume()
    volume_node = slicer_io.node_volume_from_image(scene, volume.image, "calf")
    logic, annotation = LegSegNetLogic(), AnnotationLogic(python=["unused"])
    outdir = tmp_path / "worker"
    segmentation, _ = logic.process(
        volume_node,
        2,
        11,
        engine="nnunet",
        device="cpu",
        model=str(nnunet_fixtures.get_model("png")),
        folds=[0],
        outputFolder=outdir,
    )
    values = annotation.sliceUncertainty(segmentation)
    _, _, from_profile = read_results_profile(outdir)  # the worker's slab counts from 0, the volume from 2
    assert sorted(values) == list(range(2, 12))
    assert all(values[k + 2] == pytest.approx(v, rel=1e-5) for k, v in from_profile.items())
    state = annotation.startReview(segmentation, volume_node, slicesPerScan=3, mode="uncertain", minGap=2)
    assert list(state.slices) == review.most_uncertain_slices(values, 2, 11, 3, 2)
    assert annotation.reviewState(segmentation).mode == "uncertain"
    # the same request again keeps the review; a threshold run replaces the labels and clears the uncertainty
    assert annotation.startReview(segmentation, volume_node, slicesPerScan=3, mode="uncertain", minGap=2) == state
    logic.process(volume_node, 2, 11, engine="threshold", device="cpu", segmentation=segmentation)
    assert annotation.sliceUncertainty(segmentation) == {}
    with pytest.raises(InputError, match="nnU-Net runs only"):
        annotation.startReview(segmentation, volume_node, mode="uncertain", replace=True)
