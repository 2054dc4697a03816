"""Bring your own data: dataset.json (dataio/spec.py, data.py init/check), NIfTI in and out (dataio/nifti.py, predict.py),
per-volume metrics in mm, TensorBoard (records/runlog.py), and the README's worked example end to end on tiny volumes (stored LPS,
oblique and through-plane axis first: predicted masks must land voxel for voxel on each input's grid).
Volumes and sets are generated here; the presets' descriptions are checked against the real sample files."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import data
from dataio import check as dataset_check
import evaluate
import metrics
import predict
import train
from records import config

ROOT = Path(__file__).resolve().parents[1]
SPACING = (0.8, 0.7, 3.0)  # mm per voxel along the three array axes


def volume(rng: np.random.Generator, style: int, shape=(40, 36, 8)) -> tuple[np.ndarray, np.ndarray]:
    """(image float32, label uint8) [X,Y,Z]: an ellipsoid organ (class 1) with a core (class 2) on noise; the
    domain style changes offset, scale and noise (intensities like three scanners)."""
    x, y, z = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    cx, cy = shape[0] / 2 + rng.uniform(-3, 3), shape[1] / 2 + rng.uniform(-3, 3)
    r2 = ((x - cx) / 12) ** 2 + ((y - cy) / 10) ** 2 + ((z - 3.5) / 2.5) ** 2
    lab = np.where(r2 < 0.3, 2, np.where(r2 < 1, 1, 0)).astype(np.uint8)
    offset, scale, noise = [(0, 100, 5), (500, 40, 2), (-200, 300, 30)][style]
    img = offset + scale * lab.astype(np.float32) + rng.normal(0, noise, shape)
    return img.astype(np.float32), lab


def ras_affine() -> np.ndarray:
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = (-10.0, 5.0, 2.5)
    return affine


def save_nii(path: Path, arr: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, ras_affine() if affine is None else affine), str(path))
    return path


# how each domain stores its volumes (every voxel at the same place in space as the RAS original)
STORED = {"siteA": "lps", "siteB": "oblique", "siteC": "through-plane first"}


def stored(arr: np.ndarray, how: str) -> tuple[np.ndarray, np.ndarray]:
    """(array, affine) of a RAS volume (ras_affine) stored as `how`: "lps" = x and y flipped; "oblique" = the
    affine rotated 20 degrees about z and x flipped; "through-plane first" = axes (z, x, y), the 3 mm axis first."""
    aff = ras_affine()
    if how == "oblique":
        c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
        aff = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]) @ aff
    perm = (2, 0, 1) if how == "through-plane first" else (0, 1, 2)
    a, out = np.transpose(arr, perm), aff.copy()
    out[:, :3] = aff[:, list(perm)]
    for j in {"lps": (0, 1), "oblique": (0,)}.get(how, ()):
        a = np.flip(a, axis=j)
        out[:3, 3] += out[:3, j] * (a.shape[j] - 1)  # the flipped axis now starts at the far end
        out[:3, j] = -out[:3, j]
    return np.ascontiguousarray(a), out


def make_volumes(raw: Path) -> None:
    """raw/<domain>/<split>/{images,labels}/<case>.nii.gz: 3 domains, 2 train and 1 test volume each, stored
    LPS (siteA), oblique (siteB) and through-plane axis first (siteC)."""
    rng = np.random.default_rng(0)
    for s, dom in enumerate(("siteA", "siteB", "siteC")):
        for split, n in (("train", 2), ("test", 1)):
            for k in range(n):
                img, lab = volume(rng, s)
                save_nii(raw / dom / split / "images" / f"{dom}{split}{k}_0000.nii.gz", *stored(img, STORED[dom]))
                save_nii(raw / dom / split / "labels" / f"{dom}{split}{k}.nii.gz", *stored(lab, STORED[dom]))


def slice_all(raw: Path, out: Path) -> None:
    for dom in ("siteA", "siteB", "siteC"):
        for split in ("train", "test"):
            src = raw / dom / split
            extra = ["--skip-empty"] if split == "train" else []
            assert data.main(["slice", "--images", str(src / "images"), "--labels", str(src / "labels"),
                              "--out", str(out / dom / split), *extra]) == 0


# ----------------------------------------------------------------------------- the worked example
def test_worked_example_nifti_to_nifti(tmp_path, capsys, monkeypatch):
    raw, my_set = tmp_path / "raw", tmp_path / "my_set"
    make_volumes(raw)
    slice_all(raw, my_set)
    geo = json.loads((my_set / "siteB/test/volumes.json").read_text())
    assert geo["intensity"] == {"mode": "percentile", "low": 0.5, "high": 99.5}
    assert geo["cases"]["siteBtest0"]["slice_spacing"] == pytest.approx([0.7, 0.8, 3.0])
    assert len(list((my_set / "siteB/test/image").glob("siteBtest0_*.png"))) == 8     # test: every slice
    assert len(list((my_set / "siteA/train/image").glob("*.png"))) < 16               # train: empty ones skipped
    for dom in STORED:  # however stored, every site is cut into axial slices of 36 rows x 40 columns
        g = json.loads((my_set / dom / "test/volumes.json").read_text())["cases"][f"{dom}test0"]
        assert g["plane"] == "axial" and g["slice_shape"] == [36, 40] and len(g["slices"]) == 8, dom
    assert data.main(["init", str(my_set)]) == 0
    desc = json.loads((my_set / "dataset.json").read_text())
    assert desc["domains"] == ["siteA", "siteB", "siteC"] and desc["split"] == "folders"
    assert desc["mask"] == {"values": {"0": 0, "1": 1, "2": 2}} and "_check" not in desc  # class ids: usable as is
    assert desc["volume_rule"] and desc["intensity"]["mode"] == "percentile" and desc["channels"] == 1
    desc["unet_size"] = 32  # the one edit: a tiny U-Net input for the test
    (my_set / "dataset.json").write_text(json.dumps(desc))
    assert data.main(["check", "--dataset", str(my_set)]) == 0
    assert "siteC" in capsys.readouterr().out
    run = train.train(["--dataset", str(my_set), "--sam", "tiny", "--unet-width", "4", "--labeled", "2",
                       "--batch", "1", "1", "--steps", "2", "--eval-every", "2", "--device", "cpu", "--amp", "off",
                       "--out", str(tmp_path / "run")])
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["dataset_description"]["intensity"] == desc["intensity"] and cfg["num_classes"] == 3
    with pytest.raises(SystemExit) as e:
        evaluate.main([str(run / "last.pt"), "--per-volume", "--model", "both", "--device", "cpu",
                       "--out", str(tmp_path / "ev")])
    assert e.value.code == 0
    res = json.loads((tmp_path / "ev/results.json").read_text())
    assert res["models"]["unet"]["per_volume"]["units"] == "hd95 and asd in mm"
    assert "per volume (3D, mm)" in capsys.readouterr().out
    # predict in a fresh process, with the set folder gone: the checkpoint carries the description and the rule
    shutil.move(str(my_set), str(tmp_path / "moved"))
    vols = raw / "siteA/test/images"
    r = subprocess.run([sys.executable, str(ROOT / "predict.py"), str(run / "last.pt"), "--images", str(vols),
                        "--out", str(tmp_path / "seg"), "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    src, seg = nib.load(str(vols / "siteAtest0_0000.nii.gz")), nib.load(str(tmp_path / "seg/siteAtest0.nii.gz"))
    assert seg.shape == src.shape and np.allclose(seg.affine, src.affine)
    assert seg.header.get_zooms() == pytest.approx(SPACING) and seg.get_data_dtype() == np.uint8
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1, 2}
    # every site's test volume, with a stand-in for the model that reads the class from the intensity: the LPS,
    # oblique and through-plane-first volumes come back voxel for voxel on their own grids
    new = tmp_path / "new"
    new.mkdir()
    for dom in STORED:
        shutil.copy(raw / dom / "test/images" / f"{dom}test0_0000.nii.gz", new / f"{dom}.nii.gz")
    monkeypatch.setattr(predict, "predict_slices", lambda models, cfg, slices, *a: [np.digitize(s, [85, 170])
                                                                                    for s in slices])
    with pytest.raises(SystemExit) as e:
        predict.main([str(run), "--images", str(new), "--out", str(tmp_path / "seg_all"), "--model", "unet",
                      "--device", "cpu"])
    assert e.value.code == 0
    from dataio import nifti

    for dom in STORED:
        src = nib.load(str(new / f"{dom}.nii.gz"))
        seg = nib.load(str(tmp_path / "seg_all" / f"{dom}.nii.gz"))
        lab = np.asarray(nib.load(str(raw / dom / "test/labels" / f"{dom}test0.nii.gz")).dataobj)
        want = np.digitize(nifti.to_uint8(np.asarray(src.dataobj), None), [85, 170])  # the stand-in, in place
        assert np.allclose(seg.affine, src.affine) and np.array_equal(np.asarray(seg.dataobj), want), dom
        assert np.mean(want == lab) > 0.99  # and that is the organ (noise aside)


def test_nifti_round_trip_and_intensity(tmp_path):
    """predict.py's volume path with a fake model: slices out and back land on the same voxels."""
    from dataio import nifti

    img, lab = volume(np.random.default_rng(1), 2)
    p = save_nii(tmp_path / "in/c1.nii.gz", img)
    u8 = nifti.to_uint8(img, None)
    lo, hi = np.percentile(img, [0.5, 99.5])
    assert u8.min() == 0 and u8.max() == 255 and (u8 == 255).mean() == pytest.approx(0.005, abs=0.003)
    assert np.array_equal(nifti.to_uint8(img, {"mode": "window", "low": lo, "high": hi}), u8)
    out = nifti.segment_volume(p, tmp_path, lambda sl, c: [(s > 128).astype(np.int64) for s in sl], 1, None)
    seg = nib.load(str(out))
    assert np.array_equal(np.asarray(seg.dataobj), (u8 > 128).astype(np.uint8))  # the same voxel order
    assert np.allclose(seg.affine, nib.load(str(p)).affine)


def test_metrics_in_mm():
    gt = np.zeros((6, 10, 10), np.int64)
    gt[2:4, 3:7, 3:7] = 1
    pred = np.roll(gt, 1, axis=0)  # one slice off along the 3 mm axis
    (m,) = metrics.case_metrics(pred, gt, [(1,)], spacing=(3.0, 0.7, 0.8))
    (v,) = metrics.case_metrics(pred, gt, [(1,)])
    assert v["hd95"] == pytest.approx(1.0) and m["hd95"] == pytest.approx(3.0) and m["dice"] == v["dice"]


# ----------------------------------------------------------------------------- descriptions and presets
def test_presets_are_descriptions_read_from_a_file(tmp_path, shared_data):
    """A preset's description written as dataset.json reads the real sample files exactly as the preset."""
    shutil.copytree(shared_data / "Fundus", tmp_path / "Fundus")
    desc = dict(data.DESCRIPTIONS["fundus"])
    desc.pop("folder")
    (tmp_path / "Fundus/dataset.json").write_text(json.dumps(desc))
    own = str(tmp_path / "Fundus")
    for d in (1, 4):
        a, b = data.list_cases("fundus", shared_data / "Fundus", d, "test"), data.list_cases(own, own, d, "test")
        assert [Path(i).name for i, _ in a] == [Path(i).name for i, _ in b]
        la, lb = data.load_case("fundus", *a[0])[1], data.load_case(own, *b[0])[1]
        assert np.array_equal(la, lb) and set(np.unique(la).tolist()) == {0, 1, 2}
    assert data.spec(own)["parts"] == data.PRESETS["fundus"]["parts"] == [(1,), (1, 2)]


def test_init_on_real_prostate_slices(tmp_path, shared_data, capsys):
    shutil.copytree(shared_data / "ProstateSlice", tmp_path / "P")
    desc = dataset_check.describe(tmp_path / "P")
    assert desc["domains"] == data.PRESETS["prostate"]["domains"] and desc["images"] == "image"
    assert desc["mask"] == {"values": {"0": 0, "255": 1}} and "mapped" in desc["_check"]  # not class ids: said so
    assert desc["channels"] == 1 and desc["split"] == "folders"
    dataset_check.init(tmp_path / "P")
    with pytest.raises(data.DataError, match="exists"):
        dataset_check.init(tmp_path / "P")
    assert data.main(["check", "--dataset", str(tmp_path / "P")]) == 2  # the release's I2CVB defect, listed
    out, err = capsys.readouterr()
    assert "I2CVB/train/image/00_01.png has no mask" in out and "I2CVB/train/mask/00_00.png has no image" in out
    assert "I2CVB: no train cases" in out and "384x384" in out  # every problem listed, and the image sizes
    assert err.count("\n") == 1 and err.startswith("error: 3 problem(s)")


def test_seeded_split_is_4_to_1_and_reproducible(tmp_path):
    from PIL import Image

    for dom in ("a", "b"):
        for k in range(10):
            for sub, v in (("image", 90), ("mask", 1)):
                (tmp_path / "S" / dom / sub).mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((8, 8), v, np.uint8)).save(tmp_path / "S" / dom / sub / f"x{k}.png")
    dataset_check.init(tmp_path / "S")
    s = str(tmp_path / "S")
    assert data.spec(s)["split"] == "seeded"
    tr, te = data.list_cases(s, s, 1, "train"), data.list_cases(s, s, 1, "test")
    assert len(tr) == 8 and len(te) == 2 and not {i for i, _ in tr} & {i for i, _ in te}
    assert te == data.list_cases(s, s, 1, "test") and te != [(i.replace("/a/", "/b/"), [m.replace("/a/", "/b/")
                                                                 for m in ms]) for i, ms in data.list_cases(s, s, 2, "test")]


# ----------------------------------------------------------------------------- bad input: one line, exit 2
@pytest.mark.parametrize("edit,field", [({"classes": None}, '"classes": missing'),
                                        ({"channels": "1"}, '"channels": expected 1 (gray) or 3'),
                                        ({"mask": {"values": {"0": 0, "x": 1}}}, '"mask.values": key \'x\''),
                                        ({"parts": {"organ": [5]}}, '"parts.organ"'),
                                        ({"train": {"stpes": 3}}, '"train.stpes": unknown'),
                                        ({"split": "random"}, '"split": expected one of')])
def test_bad_json_fields(tmp_path, capsys, edit, field):
    desc = {"domains": ["a"], "classes": ["background", "organ"], "mask": {"values": {"0": 0, "1": 1}}, "channels": 1}
    desc.update(edit)
    desc = {k: v for k, v in desc.items() if v is not None}
    (tmp_path / "dataset.json").write_text(json.dumps(desc))
    assert data.main(["check", "--dataset", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path / "dataset.json") in err and field in err, err


def test_train_cli_bad_json_is_one_line(tmp_path):
    (tmp_path / "dataset.json").write_text('{"domains": ["a"], "classes": ["bg", "x"], "channels": 1}')
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "--dataset", str(tmp_path), "--out",
                        str(tmp_path / "r")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1
    assert 'field "mask": missing' in r.stderr


def test_unmapped_mask_value_is_listed(tmp_path, capsys):
    raw, my_set = tmp_path / "raw", tmp_path / "set"
    make_volumes(raw)
    slice_all(raw, my_set)
    dataset_check.init(my_set)
    mask = my_set / "siteC/test/mask/siteCtest0_003.png"
    from PIL import Image

    a = np.asarray(Image.open(mask)).copy()
    a[0, 0] = 7
    Image.fromarray(a).save(mask)
    assert data.main(["check", "--dataset", str(my_set)]) == 2
    out = capsys.readouterr().out
    assert "siteCtest0_003.png: set mask values {7} outside the encoding {0, 1, 2}" in out


def test_bad_nifti_inputs(tmp_path, capsys):
    img, lab = volume(np.random.default_rng(2), 0)
    imgs, labs = tmp_path / "i", tmp_path / "l"
    save_nii(imgs / "a.nii.gz", img)
    save_nii(labs / "a.nii.gz", lab)
    save_nii(imgs / "b.nii.gz", img)

    def slice_err(*extra) -> str:
        assert data.main(["slice", "--images", str(imgs), "--labels", str(labs), "--out", str(tmp_path / "o"),
                          *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ")
        return err

    assert "b.nii.gz: no label partner" in slice_err()
    save_nii(labs / "b.nii.gz", lab[:, :, :5])
    assert "label shape (40, 36, 5) differs from image" in slice_err()
    save_nii(labs / "b.nii.gz", lab)
    save_nii(imgs / "b.nii.gz", np.stack([img, img], -1))
    assert "a 4D volume of shape (40, 36, 8, 2)" in slice_err()
    (imgs / "b.nii.gz").unlink()
    assert "--window/--percentiles" in slice_err("--window", "5", "1")
    assert data.main(["slice", "--images", str(imgs), "--labels", str(labs), "--out", str(tmp_path / "o"),
                      "--window", "-100", "300"]) == 0
    assert json.loads((tmp_path / "o/volumes.json").read_text())["intensity"]["mode"] == "window"


# ----------------------------------------------------------------------------- TensorBoard
def test_tensorboard_events(tmp_path, shared_data):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train.train(["--dataset", "fundus", "--data-root", str(shared_data), "--labeled", "1", "--sam", "tiny",
                       "--unet-width", "4", "--batch", "1", "1", "--steps", "2", "--eval-every", "2", "--log-every",
                       "1", "--device", "cpu", "--amp", "off", "--tensorboard", "--out", str(tmp_path / "r")])
    ev = EventAccumulator(str(run / "tb"), size_guidance={"images": 0, "scalars": 0})
    ev.Reload()
    tags = ev.Tags()
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")[1:]
    assert {f"train/{k}" for k in header} <= set(tags["scalars"])
    assert [e.step for e in ev.Scalars("train/loss")] == [1, 2]
    assert {f"test_dice/{m}/Domain{d}" for m in ("unet", "medsam") for d in range(1, 5)} <= set(tags["scalars"])
    assert "unlabeled/pseudo_labels" in tags["images"] and sum(t.startswith("test/") for t in tags["images"]) == 4
    strip = ev.Images("test/Domain1/gdrishtiGS_001")[0]
    assert strip.width == 4 * strip.height  # image | GT | SAM | U-Net
    assert (run / "curves.png").is_file() and (run / "metrics.csv").is_file()


def test_tensorboard_missing_is_one_line(tmp_path, shared_data, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with pytest.raises(config.ConfigError, match="pip install tensorboard"):
        train.train(["--dataset", "fundus", "--data-root", str(shared_data), "--labeled", "1", "--sam", "tiny",
                     "--unet-width", "4", "--steps", "1", "--device", "cpu", "--tensorboard", "--out",
                     str(tmp_path / "r")])


def test_no_nibabel_or_tensorboard_needed_without_them():
    code = ("import sys; sys.modules['nibabel'] = None; sys.modules['tensorboard'] = None; "
            "sys.modules['torch.utils.tensorboard'] = None; import train, evaluate, predict, data; "
            "from dataio import check, nifti; from records import runlog; data.spec('fundus')")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-1000:]
