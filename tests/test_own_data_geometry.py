"""Own data you can trust (issue 29): NIfTI geometry (canonical orientation, the through-plane axis, image/label
grids), nothing overwritten or half-written (data.py slice, predict.py --out, train.py --overwrite's TensorBoard
events), bad values (non-finite voxels, label values 0/1/7 kept), and one line instead of a traceback for every
bad input. predict.py runs here with a stand-in model that reads the class from the intensity (no training), so
LPS, oblique and through-plane-first volumes must come back voxel for voxel; the worked example with a trained
model on such volumes is tests/test_own_data.py. Volumes are tiny (16 x 12 x 8 voxels)."""
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

import data
from dataio import nifti
import predict
from records.checkpoint import upgrade
from records import runlog
import train

SHAPE, SPACING = (16, 12, 8), (0.9, 0.8, 4.0)  # RAS+ voxels; axial slices are 4 mm apart
LABELS = (0, 1, 7)  # label values of background, organ, core: not class ids, kept from input to output


# ----------------------------------------------------------------------------- volumes
def ras_volume(seed: int, shape=SHAPE, spacing=SPACING) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image float32, label uint8 in LABELS, RAS+ affine): an off-centre organ with a core, so any flip or
    rotation shows; no foreground on the first slice of any axis; class k has intensity 100 k (+ noise)."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.arange(n) / (n - 1) for n in shape], indexing="ij")
    r2 = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, (0.6, 0.55, 0.6), (0.3, 0.35, 0.3)))
    core = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, (0.7, 0.6, 0.6), (0.15, 0.2, 0.25)))
    cls = np.where(core < 1, 2, np.where(r2 < 1, 1, 0))
    img = (100.0 * cls + rng.normal(0, 2, shape)).astype(np.float32)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = (-30.0, 12.0, 4.5)
    return img, np.array(LABELS, np.uint8)[cls], affine


def rotation(deg_z: float, deg_x: float) -> np.ndarray:
    a, b = np.radians(deg_z), np.radians(deg_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    r = np.eye(4)
    r[:3, :3] = rz @ rx
    return r


def stored(arr: np.ndarray, affine: np.ndarray, perm=(0, 1, 2), flips=(False, False, False)):
    """The same voxels stored another way: array axes permuted (new axis j = old axis perm[j]), then flipped;
    the affine follows, so every voxel keeps its position in space."""
    a, aff = np.transpose(arr, perm), affine.copy()
    aff[:, :3] = affine[:, list(perm)]
    for j, f in enumerate(flips):
        if f:
            a = np.flip(a, axis=j)
            aff[:3, 3] += aff[:3, j] * (a.shape[j] - 1)
            aff[:3, j] = -aff[:3, j]
    return np.ascontiguousarray(a), aff


VARIANTS = {  # name -> (perm, flips, oblique): how siteA/B/C store the same kind of scan
    "lps": ((0, 1, 2), (True, True, False), False),
    "oblique": ((0, 1, 2), (True, False, False), True),
    "through_plane_first": ((2, 0, 1), (False, False, False), False),  # stored 8 x 16 x 12, 4 mm on axis 0
}


def variant(name: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    img, lab, aff = ras_volume(seed)
    perm, flips, oblique = VARIANTS[name]
    if oblique:
        aff = rotation(20, 10) @ aff
    (img, a2), (lab, _) = stored(img, aff, perm, flips), stored(lab, aff, perm, flips)
    return img, lab, a2


def save(path: Path, arr: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, affine), str(path))
    return path


def pair(folder: Path, case: str, img: np.ndarray, lab: np.ndarray, affine: np.ndarray, lab_affine=None) -> None:
    save(folder / "images" / f"{case}_0000.nii.gz", img, affine)
    save(folder / "labels" / f"{case}.nii.gz", lab, affine if lab_affine is None else lab_affine)


def slice_cli(src: Path, out: Path, *extra: str) -> int:
    return data.main(["slice", "--images", str(src / "images"), "--labels", str(src / "labels"), "--out", str(out),
                      *extra])


def one_line(capsys, code: int, expected_code: int = 2) -> str:
    err = capsys.readouterr().err
    assert code == expected_code and err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def pngs(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


def stand_in(models, cfg, slices, device, amp, batch=8):
    """predict.predict_slices without a network: the class from the slice's intensity (bands of 255 / 3)."""
    return [np.digitize(s if s.ndim == 2 else s[..., 0], [85, 170]).astype(np.int64) for s in slices]


# ----------------------------------------------------------------------------- geometry
def test_lps_and_ras_copies_give_the_same_slices(tmp_path):
    img, lab, aff = ras_volume(0)
    pair(tmp_path / "ras", "c", img, lab, aff)
    (lps_img, lps_aff), (lps_lab, _) = [stored(a, aff, flips=(True, True, False)) for a in (img, lab)]
    pair(tmp_path / "lps", "c", lps_img, lps_lab, lps_aff)
    for name in ("ras", "lps"):
        assert slice_cli(tmp_path / name, tmp_path / "set" / name) == 0
    ras, lps = [tmp_path / "set" / n for n in ("ras", "lps")]
    for sub in ("image", "mask"):
        a, b = pngs(ras / sub), pngs(lps / sub)
        assert list(a) == list(b) == [f"c_{k:03d}.png" for k in range(8)]
        assert all(np.array_equal(a[k], b[k]) for k in a), f"{sub}: the LPS copy is sliced differently"
    geo = {n: json.loads((tmp_path / "set" / n / "volumes.json").read_text())["cases"]["c"] for n in ("ras", "lps")}
    assert geo["ras"]["orientation"] == "RAS" and geo["lps"]["orientation"] == "LPS"
    assert geo["lps"]["plane"] == "axial" and geo["lps"]["slice_spacing"] == pytest.approx([0.8, 0.9, 4.0])
    # radiological display: the organ sits towards the patient's right (high x in RAS+) = the image's left half
    m = pngs(ras / "mask")["c_004.png"] > 0
    assert m[:, : m.shape[1] // 2].sum() > m[:, m.shape[1] // 2:].sum()


def test_oblique_volume_sliced_like_its_reflipped_copy_and_segmented_back_voxel_for_voxel(tmp_path):
    img, lab, aff = variant("oblique", 1)
    pair(tmp_path / "a", "c", img, lab, aff)
    copy = [stored(a, aff, flips=(True, False, True)) for a in (img, lab)]  # the same scan, stored x- and z-flipped
    pair(tmp_path / "b", "c", copy[0][0], copy[1][0], copy[0][1])
    for name in ("a", "b"):
        assert slice_cli(tmp_path / name, tmp_path / "set" / name) == 0
    a, b = pngs(tmp_path / "set/a/image"), pngs(tmp_path / "set/b/image")
    assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)
    for name in ("a", "b"):  # predict.py's volume path with the stand-in model: the labels, on the input's grid
        src = tmp_path / name / "images/c_0000.nii.gz"
        out = nifti.segment_volume(src, tmp_path / f"seg_{name}", lambda sl, c: stand_in(None, None, sl, None, None),
                                   1, None, values=np.array(LABELS))
        seg, want = nib.load(str(out)), nib.load(str(tmp_path / name / "labels/c.nii.gz"))
        assert np.array_equal(np.asarray(seg.dataobj), np.asarray(want.dataobj)), name
        assert np.allclose(seg.affine, want.affine) and seg.get_data_dtype() == np.uint8


def test_mirrored_or_shifted_label_is_refused_naming_both_files(tmp_path, capsys):
    img, lab, aff = ras_volume(2)
    mirrored = aff.copy()
    mirrored[0, 0] = -mirrored[0, 0]  # the label array read as if stored right-to-left
    pair(tmp_path / "m", "c", img, lab, aff, mirrored)
    err = one_line(capsys, slice_cli(tmp_path / "m", tmp_path / "out"))
    assert "labels/c.nii.gz" in err and "images/c_0000.nii.gz" in err and "mirrored" in err
    shifted = aff.copy()
    shifted[:3, 3] += (0, 0, 2.0)  # half a slice off
    pair(tmp_path / "s", "c", img, lab, aff, shifted)
    assert "differs from image" in one_line(capsys, slice_cli(tmp_path / "s", tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    # the same grid stored another way (an LPS label for a RAS image) is not a mismatch: the same masks
    lps_lab, lps_aff = stored(lab, aff, flips=(True, True, False))
    pair(tmp_path / "ok", "c", img, lps_lab, aff, lps_aff)
    pair(tmp_path / "ref", "c", img, lab, aff)
    for name in ("ok", "ref"):
        assert slice_cli(tmp_path / name, tmp_path / "set" / name) == 0
    a, b = pngs(tmp_path / "set/ok/mask"), pngs(tmp_path / "set/ref/mask")
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("thick", [0, 1, 2])
def test_slices_cut_across_the_largest_spacing_on_any_axis(tmp_path, thick):
    """A volume stored 8 x 16 x 12 with 5 mm on axis 0 gives 8 slices of 16 x 12, not 12 slices of 16 x 8."""
    shape, spacing = [16, 12, 10], [0.9, 0.8, 1.0]
    shape[thick], spacing[thick] = 8, 5.0
    img, lab, aff = ras_volume(3, tuple(shape), tuple(spacing))
    pair(tmp_path / "v", "c", img, lab, aff)
    assert slice_cli(tmp_path / "v", tmp_path / "set") == 0
    geo = json.loads((tmp_path / "set/volumes.json").read_text())
    g = geo["cases"]["c"]
    rows, cols = [k for k in range(3) if k != thick][::-1]
    assert geo["axis"] == "auto" and g["slice_axis"] == thick and g["plane"] == nifti.PLANES[thick]
    assert g["slices"] == list(range(8)) and g["slice_shape"] == [shape[rows], shape[cols]]
    assert g["slice_spacing"] == pytest.approx([spacing[rows], spacing[cols], 5.0])
    ims = pngs(tmp_path / "set/image")
    assert len(ims) == 8 and all(a.shape == (shape[rows], shape[cols]) for a in ims.values())
    # --axis overrides; predict.py reuses the rule: slices of the same shape, the labels back voxel for voxel
    other = (thick + 1) % 3
    assert slice_cli(tmp_path / "v", tmp_path / "set2", "--axis", nifti.PLANES[other]) == 0
    assert json.loads((tmp_path / "set2/volumes.json").read_text())["cases"]["c"]["slice_axis"] == other
    seen = []

    def model(sl, c):
        seen.extend(s.shape for s in sl)
        return stand_in(None, None, sl, None, None)

    out = nifti.segment_volume(tmp_path / "v/images/c_0000.nii.gz", tmp_path / "seg", model, 1, None, "auto",
                               np.array(LABELS))
    assert seen == [(shape[rows], shape[cols])] * 8
    assert np.array_equal(np.asarray(nib.load(str(out)).dataobj), lab)


# ----------------------------------------------------------------------------- data.py slice: whole or nothing
def test_slice_validates_everything_before_writing(tmp_path, capsys):
    img, lab, aff = ras_volume(4)
    pair(tmp_path / "v", "a", img, lab, aff)
    pair(tmp_path / "v", "b", img, lab[:, :, :5], aff)  # the second volume's label is short
    err = one_line(capsys, slice_cli(tmp_path / "v", tmp_path / "set/d/train"))
    assert "label shape (16, 12, 5) differs from image" in err
    assert not (tmp_path / "set/d/train").exists(), "the first volume's slices were written"
    assert os.listdir(tmp_path / "set/d") == []  # no temporary folder left behind either


def test_reslice_with_another_rule_is_refused_before_any_png_changes(tmp_path, capsys):
    img, lab, aff = ras_volume(5)
    pair(tmp_path / "v", "a", img, lab, aff)
    out = tmp_path / "set/d/test"
    assert slice_cli(tmp_path / "v", out) == 0
    before = {p.name: p.read_bytes() for p in (out / "image").iterdir()}
    err = one_line(capsys, slice_cli(tmp_path / "v", out, "--window", "0", "50"))
    assert "volumes.json: written with intensity" in err
    assert {p.name: p.read_bytes() for p in (out / "image").iterdir()} == before
    assert "axis auto" in one_line(capsys, slice_cli(tmp_path / "v", out, "--axis", "coronal"))


def test_reslicing_replaces_the_split_as_a_whole(tmp_path):
    img, lab, aff = ras_volume(6)
    pair(tmp_path / "v", "a", img, lab, aff)
    pair(tmp_path / "v", "b", img, lab, aff)
    out = tmp_path / "set/d/train"
    assert slice_cli(tmp_path / "v", out) == 0
    assert len(pngs(out / "image")) == 16 and pngs(out / "mask")["a_000.png"].max() == 0  # an empty edge slice
    (tmp_path / "v/images/b_0000.nii.gz").unlink()
    (out / "notes.txt").write_text("mine")
    assert slice_cli(tmp_path / "v", out, "--skip-empty") == 0
    kept = json.loads((out / "volumes.json").read_text())["cases"]
    names = sorted(pngs(out / "image"))
    assert list(kept) == ["a"] and names == sorted(pngs(out / "mask"))
    assert names == [f"a_{k:03d}.png" for k in kept["a"]["slices"]] and "a_000.png" not in names  # nothing stale
    assert (out / "notes.txt").read_text() == "mine" and sorted(os.listdir(out.parent)) == ["train"]


def test_two_files_of_one_case_are_refused(tmp_path, capsys):
    img, lab, aff = ras_volume(7)
    pair(tmp_path / "v", "x", img, lab, aff)
    save(tmp_path / "v/images/x.nii", img, aff)  # x_0000.nii.gz and x.nii: both case x
    err = one_line(capsys, slice_cli(tmp_path / "v", tmp_path / "out"))
    assert "x.nii and x_0000.nii.gz are both case 'x'" in err


def test_slice_out_that_is_a_file_or_holds_foreign_pngs(tmp_path, capsys):
    img, lab, aff = ras_volume(8)
    pair(tmp_path / "v", "a", img, lab, aff)
    (tmp_path / "f").write_text("a file")
    assert "--out" in one_line(capsys, slice_cli(tmp_path / "v", tmp_path / "f")) and (tmp_path / "f").is_file()
    assert "cannot create" in one_line(capsys, slice_cli(tmp_path / "v", tmp_path / "f/train"))
    (tmp_path / "mine/image").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "mine/image/x.png")
    assert "not written by data.py slice" in one_line(capsys, slice_cli(tmp_path / "v", tmp_path / "mine"))
    assert os.listdir(tmp_path / "mine/image") == ["x.png"]


# ----------------------------------------------------------------------------- bad values, one line each
def test_non_finite_voxels_are_one_line_with_the_count(tmp_path, capsys):
    img, lab, aff = ras_volume(9)
    img[3, 4, 5], img[0, 0, 0] = np.nan, np.inf
    pair(tmp_path / "v", "a", img, lab, aff)
    err = one_line(capsys, slice_cli(tmp_path / "v", tmp_path / "out"))
    assert "images/a_0000.nii.gz: 2 non-finite voxel(s)" in err and not (tmp_path / "out").exists()


def test_2d_nifti_is_not_called_a_4d_series(tmp_path, capsys):
    img, lab, aff = ras_volume(10)
    pair(tmp_path / "v", "a", img[:, :, 0], lab[:, :, 0], aff)
    err = one_line(capsys, slice_cli(tmp_path / "v", tmp_path / "out"))
    assert "a 2D image of shape (16, 12)" in err and "4D" not in err


def test_slice_axis_field_is_checked(tmp_path, capsys):
    desc = {"domains": ["a"], "classes": ["bg", "x"], "mask": {"values": {"0": 0, "1": 1}}, "channels": 1,
            "slice_axis": "diagonal"}
    (tmp_path / "dataset.json").write_text(json.dumps(desc))
    err = one_line(capsys, data.main(["check", "--dataset", str(tmp_path)]))
    assert 'field "slice_axis": expected one of auto, sagittal, coronal, axial' in err


def _png_set(root: Path, domains=("a", "b"), splits=("train", "test")) -> None:
    for d in domains:
        for s in splits:
            for k in range(3):
                for sub, v in (("image", 90 + k), ("mask", k % 2)):
                    (root / d / s / sub).mkdir(parents=True, exist_ok=True)
                    Image.fromarray(np.full((8, 8), v, np.uint8)).save(root / d / s / sub / f"x{k}.png")


@pytest.mark.parametrize("which", ["image", "mask"])
def test_init_on_a_corrupt_png_is_one_line(tmp_path, capsys, which):
    _png_set(tmp_path / "S")
    bad = tmp_path / "S/a/train" / which / "x1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    err = one_line(capsys, data.main(["init", str(tmp_path / "S")]))
    assert str(bad) in err and "corrupt" in err


def test_init_names_the_missing_test_folder(tmp_path, capsys):
    _png_set(tmp_path / "S", splits=("train",))
    err = one_line(capsys, data.main(["init", str(tmp_path / "S")]))
    assert "has train/ but no test/ folder" in err


# ----------------------------------------------------------------------------- predict.py: nothing overwritten
def _predict(capsys, *argv) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        predict.main([str(a) for a in argv])
    return e.value.code, capsys.readouterr().err


@pytest.mark.parametrize("names,clash", [(("x.nii", "x.nii.gz"), "x.nii.gz"),
                                         (("y.nii.gz", "y_0000.nii.gz"), "y.nii.gz"),
                                         (("a.png", "a_overlay.png"), "a_overlay.png")])
def test_predict_refuses_inputs_that_would_write_one_file(tmp_path, capsys, names, clash):
    src = tmp_path / "in"
    src.mkdir()
    for n in names:
        (src / n).write_bytes(b"")
    code, err = _predict(capsys, tmp_path / "no.pt", "--images", src, "--out", tmp_path / "out")
    assert code == 2 and err.count("\n") == 1 and f"would both write {clash}" in err, err
    assert all(n in err for n in names) and not (tmp_path / "out").exists()


def test_predict_refuses_an_out_holding_its_files_or_a_file(tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    (src / "a.png").write_bytes(b"")
    (src / "v.nii.gz").write_bytes(b"")
    (out / "v.nii.gz").write_text("an earlier result")
    code, err = _predict(capsys, tmp_path / "no.pt", "--images", src, "--out", out)
    assert code == 2 and err.count("\n") == 1 and "already holds v.nii.gz" in err and "--overwrite" in err, err
    code, err = _predict(capsys, tmp_path / "no.pt", "--images", src, "--out", out, "--overwrite")
    assert code == 2 and "no.pt" in err  # past the --out check: now the (missing) checkpoint
    code, err = _predict(capsys, tmp_path / "no.pt", "--images", src, "--out", src / "a.png")
    assert code == 2 and err.count("\n") == 1 and "is a file" in err, err
    assert (out / "v.nii.gz").read_text() == "an earlier result"


# ----------------------------------------------------------------------------- a sliced set, no training
@pytest.fixture(scope="module")
def own_set(tmp_path_factory):
    """raw volumes (siteA LPS, siteB oblique, siteC through-plane first; labels 0/1/7), sliced, init, check.
    Returns (raw folder, set folder)."""
    tmp = tmp_path_factory.mktemp("own")
    raw, my_set = tmp / "raw", tmp / "my_set"
    for s, (site, name) in enumerate(zip(("siteA", "siteB", "siteC"), VARIANTS)):
        for split, n in (("train", 2), ("test", 1)):
            for k in range(n):
                img, lab, aff = variant(name, 10 * s + k + (5 if split == "test" else 0))
                pair(raw / site / split, f"{site}{split}{k}", img, lab, aff)
            extra = ["--skip-empty"] if split == "train" else []
            assert slice_cli(raw / site / split, my_set / site / split, *extra) == 0
    assert data.main(["init", str(my_set)]) == 0
    desc = json.loads((my_set / "dataset.json").read_text())
    assert desc["mask"] == {"values": {"0": 0, "1": 1, "7": 2}} and desc["slice_axis"] == "auto"
    desc.update(unet_size=32, classes=["background", "organ", "core"], parts={"organ": [1, 2], "core": [2]})
    desc.pop("_check")
    (my_set / "dataset.json").write_text(json.dumps(desc))
    assert data.main(["check", "--dataset", str(my_set)]) == 0
    for site in ("siteA", "siteB", "siteC"):  # every site's axial slices: 16 x 12 (rows y, columns x), 8 of them
        g = json.loads((my_set / site / "test/volumes.json").read_text())["cases"][f"{site}test0"]
        assert g["plane"] == "axial" and g["slice_shape"] == [12, 16] and len(g["slices"]) == 8
    assert json.loads((my_set / "siteC/test/volumes.json").read_text())["cases"]["siteCtest0"]["shape"] == [8, 16, 12]
    return raw, my_set


def fake_checkpoint(monkeypatch, my_set: Path) -> None:
    """predict.py with the set's description as the checkpoint and the stand-in as the model (no training)."""
    cfg = dict(dataset=str(my_set), dataset_description=json.loads((my_set / "dataset.json").read_text()),
               unet_size=32, in_channels=1, amp="off")
    monkeypatch.setattr(predict, "checkpoint_path", Path)
    monkeypatch.setattr(predict, "load_checkpoint", lambda path: {"config": upgrade(cfg)})  # as load_checkpoint
    monkeypatch.setattr(predict, "build_students", lambda *a, **k: {})
    monkeypatch.setattr(predict, "predict_slices", stand_in)


def test_predicted_volumes_line_up_voxel_for_voxel_in_their_own_label_values(own_set, tmp_path, capsys, monkeypatch):
    """predict.py on LPS, oblique and through-plane-first volumes: the labels back on each input's grid, 0/1/7."""
    raw, my_set = own_set
    src = tmp_path / "new"
    src.mkdir()
    for site in ("siteA", "siteB", "siteC"):
        (src / f"{site}.nii.gz").write_bytes((raw / site / "test/images" / f"{site}test0_0000.nii.gz").read_bytes())
    fake_checkpoint(monkeypatch, my_set)
    code, err = _predict(capsys, "run", "--images", src, "--out", tmp_path / "seg", "--device", "cpu")
    assert code == 0, err
    for site in ("siteA", "siteB", "siteC"):
        seg = nib.load(str(tmp_path / "seg" / f"{site}.nii.gz"))
        want = nib.load(str(raw / site / "test/labels" / f"{site}test0.nii.gz"))
        assert seg.shape == want.shape and np.allclose(seg.affine, want.affine)
        assert np.array_equal(np.asarray(seg.dataobj), np.asarray(want.dataobj)), f"{site}: voxels moved"
        assert set(np.unique(np.asarray(seg.dataobj)).tolist()) == set(LABELS)  # 0/1/7 in, 0/1/7 out
    code, err = _predict(capsys, "run", "--images", src, "--out", tmp_path / "seg", "--device", "cpu")
    assert code == 2 and err.count("\n") == 1 and "already holds siteA.nii.gz and 2 more" in err


def test_predict_batch_skips_unreadable_volumes_and_writes_the_rest(own_set, tmp_path, capsys, monkeypatch):
    raw, my_set = own_set
    src = tmp_path / "batch"
    src.mkdir()
    (src / "good.nii.gz").write_bytes((raw / "siteA/test/images/siteAtest0_0000.nii.gz").read_bytes())
    (src / "corrupt.nii.gz").write_bytes(b"not a nifti at all")
    img, _, aff = ras_volume(11)
    img[1, 1, 1] = np.nan
    save(src / "nan.nii.gz", img, aff)
    save(src / "flat.nii.gz", img[:, :, 0], aff)
    fake_checkpoint(monkeypatch, my_set)
    code, err = _predict(capsys, "run", "--images", src, "--out", tmp_path / "seg", "--device", "cpu")
    assert code == 1 and "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("skipped ")]
    assert len(lines) == 3 and any("nan.nii.gz: 1 non-finite voxel(s)" in ln for ln in lines), err
    assert sorted(os.listdir(tmp_path / "seg")) == ["good.nii.gz"]


def _train_argv(my_set: Path, out: Path) -> list[str]:
    """The cheapest training of the set: the U-Net alone (suponly), width 4, 2 steps."""
    return ["--dataset", str(my_set), "--mode", "suponly", "--unet-width", "4", "--labeled", "2", "--batch", "1",
            "1", "--steps", "2", "--eval-every", "2", "--log-every", "1", "--device", "cpu", "--amp", "off",
            "--out", str(out)]


def test_train_checks_every_mask_before_step_0(own_set, tmp_path, monkeypatch):
    bad_set = tmp_path / "bad"
    shutil.copytree(own_set[1], bad_set)
    mask = sorted((bad_set / "siteC/train/mask").glob("*.png"))[-1]  # an unlabeled slice, drawn late or never
    a = np.asarray(Image.open(mask)).copy()
    a[0, 0] = 5
    Image.fromarray(a).save(mask)
    steps = []
    real_step = train.train_step
    monkeypatch.setattr(train, "train_step", lambda *a, **k: steps.append(1) or real_step(*a, **k))
    with pytest.raises(data.DataError, match=rf"1 mask problem.*{mask.name}: .*mask values \{{5\}}"):
        train.train(_train_argv(bad_set, tmp_path / "run"))
    assert steps == [] and not (tmp_path / "run").exists()


def test_overwrite_clears_the_old_tensorboard_events(own_set, tmp_path):
    argv = _train_argv(own_set[1], tmp_path / "r") + ["--tensorboard"]
    train.train(argv, stop_at=1)
    assert len(list((tmp_path / "r/tb").glob("events.out.tfevents.*"))) == 1
    train.train(argv + ["--overwrite"], stop_at=1)
    assert len(list((tmp_path / "r/tb").glob("events.out.tfevents.*"))) == 1


def test_tensorboard_strip_shows_a_slice_with_foreground(own_set):
    ds = str(own_set[1])
    shown = runlog.shown_cases(ds, data.test_cases(ds, ds))
    assert len(shown) == 3 and all(not Path(c[0]).stem.endswith("_000") for c in shown)
    assert all(data.load_case(ds, c[0], c[1])[1].any() for c in shown)
