"""data.py and dataio/transforms.py: real fixtures (Fundus, ProstateSlice), M&Ms/BUSI files written to tmp_path, the
synthetic generator, augmentations, random_box and every bad input. Expected numbers are computed here from the raw
pixels (numpy on the PNGs), never through data.decode_mask."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import data
from dataio import synthetic
from dataio import transforms

ROOT = Path(__file__).resolve().parents[1]


def save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(array)
    (im.convert(mode) if mode else im).save(path)
    return path


def raw(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def make_fundus(root: Path, cases: dict, size=(48, 48)) -> Path:
    """Fundus layout under root: cases = {(domain, split): [names]}; every domain gets a train and test
    folder. Images are gray noise, masks a centred disc with a cup."""
    h, w = size[1], size[0]
    yy, xx = np.mgrid[0:h, 0:w]
    r2 = (yy - h / 2) ** 2 + (xx - w / 2) ** 2
    mask = np.where(r2 < (h / 8) ** 2, 0, np.where(r2 < (h / 4) ** 2, 128, 255)).astype(np.uint8)
    for d in range(1, 5):
        for split in ("train", "test"):
            for sub in ("image", "mask"):
                (root / f"Domain{d}" / split / "ROIs" / sub).mkdir(parents=True, exist_ok=True)
            for name in cases.get((d, split), []):
                base = root / f"Domain{d}" / split / "ROIs"
                save(base / "image" / name, np.full((h, w, 3), 90, np.uint8))
                save(base / "mask" / name, np.repeat(mask[..., None], 3, -1))
    return root


# ----------------------------------------------------------------------------- presets
def test_presets_contract():
    keys = {"folder", "layout", "domains", "num_classes", "in_channels", "unet_size", "steps", "labeled",
            "labeled_ratio", "batch", "parts", "part_names", "class_names", "strong_range"}
    for name, p in data.PRESETS.items():
        assert keys <= set(p), name
        assert len(p["class_names"]) == p["num_classes"] and len(p["parts"]) == len(p["part_names"])
    assert data.PRESETS["fundus"]["parts"] == [(1,), (1, 2)]
    assert data.PRESETS["mnms"]["labeled"] == 5 and data.PRESETS["mnms"]["batch"] is None  # the authors' batch rule
    assert data.PRESETS["busi"]["labeled_ratio"] == 0.125
    assert [data.PRESETS[k]["unet_size"] for k in ("fundus", "prostate", "mnms", "busi")] == [256, 384, 288, 256]
    syn = data.PRESETS["synthetic"]
    # the CPU preset: batches below 2 only with GroupNorm (BatchNorm statistics need batches), the burn-in leaves
    # steps for the semi-supervised part, the sizes of EXPERIMENTS.md "A preset for any CPU"
    assert syn["layout"] == "fundus" and 0 <= syn["burn_in_frac"] < 1
    assert min(syn["batch"]) >= 2 or syn["unet_layer"] == "group"
    assert (syn["unet_size"], syn["lite_size"], syn["amp"]) == (128, 64, "auto")


# ----------------------------------------------------------------------------- real fixtures
def test_fundus_fixture_decoding(shared_data):
    root = shared_data / "Fundus"
    cases = data.list_cases("fundus", root, 1, "train")
    assert cases == [(str(root / "Domain1/train/ROIs/image/gdrishtiGS_002.png"),
                      [str(root / "Domain1/train/ROIs/mask/gdrishtiGS_002.png")])]
    m = raw(cases[0][1][0])[..., 0]  # stored RGB with equal channels: 0 cup, 128 rim, 255 background
    img, label = data.load_case("fundus", *cases[0])
    assert img.shape == (800, 800, 3) and img.dtype == np.uint8
    assert label.dtype == np.int64 and label.shape == (800, 800)
    expect = [(m == 255).sum(), (m == 0).sum(), (m == 128).sum()]
    assert np.bincount(label.ravel(), minlength=3).tolist() == expect
    assert expect[1] > 1000 and expect[2] > 1000  # both foreground classes are really present
    # the cup sits inside the disc: every cup pixel is surrounded by foreground, not background
    assert (np.unique(label[m == 0]) == [1]).all()
    assert np.array_equal(data.encode_mask("fundus", label), raw(cases[0][1][0]))


def test_prostate_fixture_decoding(shared_data):
    root = shared_data / "ProstateSlice"
    (img_path, masks), = data.list_cases("prostate", root, 1, "train")
    assert img_path.endswith("BIDMC/train/image/00_00.png")
    m = raw(masks[0])
    img, label = data.load_case("prostate", img_path, masks)
    assert img.shape == (384, 384) and img.dtype == np.uint8
    n_prostate = int((m == 0).sum())  # inverted encoding: 0 = prostate
    assert int((label == 1).sum()) == n_prostate and 0 < n_prostate < 0.1 * m.size
    assert np.array_equal(data.encode_mask("prostate", label), m)


def test_fixture_case_lists_and_labeled_pick(shared_data):
    root = shared_data / "Fundus"
    tests = data.test_cases("fundus", root)
    assert [(Path(i).name, d) for i, _, d in tests] == [
        ("gdrishtiGS_001.png", 1), ("G-2-R.png", 2), ("g0001.png", 3), ("V0002.png", 4)]
    lab, unl = data.split_labeled("fundus", root, 2, labeled=1)
    assert [(Path(i).name, d) for i, _, d in lab] == [("G-1-L.png", 2)]
    assert [(Path(i).name, d) for i, _, d in unl] == [("gdrishtiGS_002.png", 1), ("g0003.png", 3), ("V0001.png", 4)]
    assert all(Path(m[0]).name == Path(i).name and "/mask/" in m[0] for i, m, _ in lab + unl)


def test_labeled_pick_is_first_n_by_name(tmp_path):
    names = ["b.png", "a10.png", "a9.png", "c.png", "A.png"]
    root = make_fundus(tmp_path / "F", {(3, "train"): names, (1, "train"): ["x.png"]})
    lab, unl = data.split_labeled("fundus", root, 3, labeled=3)
    assert [Path(i).name for i, _, _ in lab] == ["A.png", "a10.png", "a9.png"]  # plain string sort
    assert [(Path(i).name, d) for i, _, d in unl] == [("b.png", 3), ("c.png", 3), ("x.png", 1)]


def test_i2cvb_image_without_mask(shared_data):
    root = shared_data / "ProstateSlice"
    with pytest.raises(data.DataError, match=r"I2CVB/train/image/00_01\.png has no mask"):
        data.list_cases("prostate", root, 4, "train")
    with pytest.raises(data.DataError, match=r"00_01\.png"):
        data.split_labeled("prostate", root, 1, labeled=1)  # the unlabeled pool includes I2CVB train
    assert len(data.test_cases("prostate", root)) == 6  # the test splits are fine


# ----------------------------------------------------------------------------- M&Ms and BUSI in tmp_path
def test_mnms_reader(tmp_path):
    root = tmp_path / "mnms"
    h, w = 30, 40  # not square, as in the release
    colour = np.zeros((h, w, 3), np.uint8)
    colour[2:10, 3:9] = (255, 0, 0)      # LV: 48 px
    colour[12:15, 5:25] = (0, 255, 0)    # MYO: 60 px
    colour[20:22, 30:40] = (0, 0, 255)   # RV: 20 px
    for v in "ABCD":
        for split in ("train", "test"):
            for name in ("p1.png", "p0.png"):
                save(root / f"vendor{v}" / split / "image" / name, np.full((h, w), 7, np.uint8))
                save(root / f"vendor{v}" / split / "mask" / name, colour)
    cases = data.list_cases("mnms", root, 2, "test")
    assert [Path(i).name for i, _ in cases] == ["p0.png", "p1.png"]
    img, label = data.load_case("mnms", *cases[0])
    assert img.shape == (h, w) and label.shape == (h, w)
    assert np.bincount(label.ravel(), minlength=4).tolist() == [h * w - 128, 48, 60, 20]
    assert np.array_equal(data.encode_mask("mnms", label), colour)
    item = data.TestSet("mnms", data.test_cases("mnms", root), 256)[0]
    assert item["img_unet"].shape == (1, 288, 288) and item["img_sam"].shape == (3, 256, 256)
    assert item["label_unet"].shape == (288, 288) and set(item["label_unet"].unique().tolist()) == {0, 1, 2, 3}
    bad = colour.copy()
    bad[0, 0] = (128, 0, 0)
    with pytest.raises(data.DataError, match="128"):
        data.decode_mask("mnms", bad)
    bad[0, 0] = (255, 255, 0)
    with pytest.raises(data.DataError, match="several pure colours"):
        data.decode_mask("mnms", bad)


def test_busi_reader(tmp_path):
    root = tmp_path / "Dataset_BUSI_with_GT"
    h, w = 20, 24
    for dom, n in (("benign", 10), ("malignant", 5)):
        for k in range(1, n + 1):
            stem = root / dom / f"{dom} ({k})"
            g = np.full((h, w), 10 * k, np.uint8)
            save(Path(f"{stem}.png"), np.repeat(g[..., None], 3, -1))  # RGB with equal channels
            m = np.zeros((h, w), np.uint8)
            m[2:6, 2:7] = 255  # 20 px
            save(Path(f"{stem}_mask.png"), m, mode="1")
    # second mask of benign (3): RGBA; a white region with alpha 0 counts (alpha ignored), a black
    # region with alpha 255 does not
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[10:13, 10:14] = (255, 255, 255, 0)  # 12 px lesion
    rgba[15:18, 15:18] = (0, 0, 0, 255)
    save(root / "benign" / "benign (3)_mask_1.png", rgba)
    assert Image.open(root / "benign" / "benign (1)_mask.png").mode == "1"
    train = data.list_cases("busi", root, 1, "train")
    test = data.list_cases("busi", root, 1, "test")
    # plain string order: (1) (10) (2) ... (9); the last int(0.2*10) = 2 are the test split
    assert [Path(i).name for i, _ in test] == ["benign (8).png", "benign (9).png"]
    assert [Path(i).name for i, _ in train][:3] == ["benign (1).png", "benign (10).png", "benign (2).png"]
    assert len(train) == 8 and len(data.list_cases("busi", root, 2, "test")) == 1
    (img3, masks3), = [c for c in train if c[0].endswith("benign (3).png")]
    assert [Path(m).name for m in masks3] == ["benign (3)_mask.png", "benign (3)_mask_1.png"]
    img, label = data.load_case("busi", img3, masks3)
    assert img.shape == (h, w) and img[0, 0] == 30
    assert label.sum() == 32 and label[10:13, 10:14].all() and not label[15:18, 15:18].any()
    lab, unl = data.split_labeled("busi", root, 1, labeled_ratio=0.25)  # int(0.25 * (8 + 4)) = 3
    assert [Path(i).name for i, _, _ in lab] == ["benign (1).png", "benign (10).png", "benign (2).png"]
    assert len(unl) == 9 and unl[-1][2] == 2
    (root / "malignant" / "malignant (2)_mask.png").unlink()
    with pytest.raises(data.DataError, match=r"malignant \(2\)\.png has no mask"):
        data.list_cases("busi", root, 2, "train")


# ----------------------------------------------------------------------------- synthetic data
def test_synthetic_generator(tmp_path):
    a = synthetic.synthesize(tmp_path / "a", seed=3, n_train=3, n_test=2, size=96)
    b = synthetic.synthesize(tmp_path / "b", seed=3, n_train=3, n_test=2, size=96)
    c = synthetic.synthesize(tmp_path / "c", seed=4, n_train=3, n_test=2, size=96)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 4 * 5 * 2
    assert Path("Domain4/test/ROIs/mask/d4_test_001.png") in files
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files)
    means, disc = [], []
    for d in range(1, 5):
        cases = data.list_cases("synthetic", a, d, "train")
        assert len(cases) == 3 and len(data.list_cases("synthetic", a, d, "test")) == 2
        imgs = [raw(i) for i, _ in cases]
        masks = [raw(m[0]) for _, m in cases]
        assert all(i.shape == (96, 96, 3) and m.shape == (96, 96, 3) for i, m in zip(imgs, masks))
        assert set(np.unique(np.stack(masks)).tolist()) == {0, 128, 255}
        for (i, m), mk in zip(cases, masks):
            label = data.load_case("synthetic", i, m)[1]
            assert ((label == 1) == (mk[..., 0] == 0)).all() and ((label == 2) == (mk[..., 0] == 128)).all()
        means.append(np.mean([i.reshape(-1, 3).mean(0) for i in imgs], 0))
        disc.append(np.mean([(mk[..., 0] < 255).mean() for mk in masks]))
    dist = [np.linalg.norm(means[i] - means[j]) for i in range(4) for j in range(i + 1, 4)]
    assert min(dist) > 30, means  # domains differ visibly in colour
    assert disc[3] < 0.6 * disc[0]  # domain 4 has smaller discs
    # regenerating in place replaces the old files; a foreign folder is never overwritten
    synthetic.synthesize(a, seed=3, n_train=1, n_test=1, size=96)
    assert len(list(a.rglob("*.png"))) == 4 * 2 * 2
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(data.DataError, match="--out .*mine: folder exists and is not a synthetic set"):
        synthetic.synthesize(tmp_path / "mine")
    with pytest.raises(data.DataError, match="python -m dataio.synthetic --out"):
        data.check_root("synthetic", tmp_path / "nothing")


def test_cli_synth_and_check(tmp_path, shared_data, capsys):
    assert synthetic.main(["--out", str(tmp_path / "synthetic"), "--n-train", "2", "--n-test", "1",
                           "--size", "64", "--seed", "5"]) == 0
    assert data.main(["check", "--dataset", "synthetic", "--data-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "domain 4 Domain4" in out and "train" in out and "rim" in out
    assert data.main(["check", "--dataset", "fundus", "--data-root", str(shared_data)]) == 0
    assert "gdrishti" not in capsys.readouterr().err
    assert data.main(["check", "--dataset", "prostate", "--data-root", str(shared_data)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "00_01.png" in err and err.count("\n") == 1


def test_cli_error_has_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "data.py"), "check", "--dataset", "fundus",
                        "--data-root", str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: data root") and "nowhere" in r.stderr and "Datasets" in r.stderr


# ----------------------------------------------------------------------------- augmentations
def self_encoding_root(tmp_path: Path, n: int = 96) -> Path:
    """Fundus-layout data whose gray image value is 100 * class id: the image encodes its own label.
    Asymmetric shapes so that flips and rotations are visible."""
    yy, xx = np.mgrid[0:n, 0:n]
    label = np.zeros((n, n), np.int64)
    label[((yy - 40) ** 2 + (xx - 35) ** 2) < 22 ** 2] = 2
    label[((yy - 44) ** 2 + (xx - 30) ** 2) < 9 ** 2] = 1
    label[70:85, 50:90] = 2
    base = tmp_path / "Fundus"
    make_fundus(base, {})
    img = np.repeat((label * 100).astype(np.uint8)[..., None], 3, -1)
    save(base / "Domain1/train/ROIs/image/a.png", img)
    save(base / "Domain1/train/ROIs/mask/a.png", data.encode_mask("fundus", label))
    return base


@pytest.mark.parametrize("sam_size,logit_size", [(96, 96), (128, 32)])
def test_weak_view_keeps_image_and_label_aligned(tmp_path, sam_size, logit_size):
    root = self_encoding_root(tmp_path)
    cases = data.split_labeled("fundus", root, 1, labeled=1)[0]
    ds = data.LabeledSet("fundus", cases, sam_size, logit_size, seed=1)  # S = 256
    plain = data.TestSet("fundus", cases, sam_size)[0]["label_unet"].numpy()  # not augmented
    changed = 0
    for draw in range(12):
        item = ds[(0, draw)]
        img, lab = item["img_unet"], item["label_unet"]
        assert img.shape == (3, 256, 256) and lab.dtype == torch.int64
        agree = (torch.round(img[0] * 255 / 100).long() == lab).float().mean()
        assert agree > 0.95, (draw, agree)
        if logit_size == sam_size:
            sam_agree = (torch.round(item["img_sam"][0] * 255 / 100).long() == item["label_sam"]).float().mean()
            assert sam_agree > 0.95
        else:  # label at R is the nearest-resized label at S
            assert item["label_sam"].shape == (logit_size, logit_size)
        changed += not np.array_equal(lab.numpy(), plain)
    assert changed >= 6  # the geometry really moved in most draws (each op has p 0.5)


def test_rotation_fill_is_background_and_labels_stay_valid():
    rng_seeds = range(30)
    n = 64
    img = np.ones((n, n, 3), np.float32)
    lab = np.full((n, n), 2, np.int64)  # all rim
    filled = 0
    for s in rng_seeds:
        out, olab = transforms.weak_augment(img, lab, np.random.default_rng(s))
        assert set(np.unique(olab).tolist()) <= {0, 2} and olab.dtype == np.int64
        assert ((out[..., 0] > 0.5) == (olab == 2)).mean() > 0.97
        filled += (olab == 0).any()
    assert filled >= 5  # rotations happened and filled corners with background 0


def test_same_key_same_sample_and_strong_view(tmp_path):
    root = make_fundus(tmp_path / "F", {(1, "train"): ["a.png"]}, size=(64, 64))
    a = root / "Domain1/train/ROIs/image/a.png"
    rng = np.random.default_rng(0)  # a textured image, so that shifts and blur are measurable
    save(a, (rng.random((64, 64, 3)) * 255).astype(np.uint8))
    cases = data.split_labeled("fundus", root, 1, labeled=1)[0]
    lab = data.LabeledSet("fundus", cases, 256, 64, seed=5)
    unl = data.UnlabeledSet("fundus", cases, 256, 64, seed=5)
    x1, x2, x3 = unl[(0, 7)], unl[(0, 7)], unl[(0, 8)]
    assert all(torch.equal(x1[k], x2[k]) for k in x1)
    assert not torch.equal(x1["weak_unet"], x3["weak_unet"])
    assert torch.equal(unl[0]["weak_unet"], unl[(0, 0)]["weak_unet"])  # int key = draw 0
    assert not torch.equal(data.UnlabeledSet("fundus", cases, 256, 64, seed=6)[(0, 7)]["weak_unet"], x1["weak_unet"])
    # the unlabeled weak view is the labeled pipeline's view; the strong view only changes photometry
    y = lab[(0, 7)]
    assert torch.equal(y["img_unet"], x1["weak_unet"]) and torch.equal(y["label_unet"], x1["label_unet"])
    w, s = x1["weak_unet"][0].numpy(), x1["strong_unet"][0].numpy()
    assert not np.allclose(w, s)
    corr = lambda p, q: np.corrcoef(p.ravel(), q.ravel())[0, 1]  # noqa: E731
    aligned = corr(w, s)
    assert aligned > 0.3 and aligned > corr(w, np.roll(s, 3, axis=1)) + 0.1
    for x in (x1, x3):
        for k in ("weak_sam", "strong_sam", "weak_unet", "strong_unet"):
            assert x[k].dtype == torch.float32 and 0 <= x[k].min() and x[k].max() <= 1
    assert x1["weak_sam"].shape == (3, 256, 256) and x1["label_sam"].shape == (64, 64)


def test_strong_augment_photometric_only():
    img = np.zeros((40, 40, 1), np.float32)
    img[15:25, 10:20] = 0.6
    for s in range(10):
        out = transforms.strong_augment(img, np.random.default_rng(s), (0.1, 2.0))
        assert out.shape == img.shape and out.dtype == np.float32
        ys, xs = np.nonzero(out[..., 0] > out.max() / 2)  # blob stays where it was
        assert abs(ys.mean() - 19.5) < 0.6 and abs(xs.mean() - 14.5) < 0.6


def test_gray_dataset_items(shared_data):
    cases = [(i, m, 1) for i, m in data.list_cases("prostate", shared_data / "ProstateSlice", 1, "train")]
    item = data.LabeledSet("prostate", cases, 256, 256)[0]
    assert item["img_unet"].shape == (1, 384, 384) and item["img_sam"].shape == (3, 256, 256)
    assert torch.equal(item["img_sam"][0], item["img_sam"][2])  # grayscale repeated explicitly
    assert item["label_unet"].shape == (384, 384) and set(item["label_unet"].unique().tolist()) <= {0, 1}
    t = data.TestSet("prostate", data.test_cases("prostate", shared_data / "ProstateSlice"), 256, limit=1)
    assert len(t) == 6 and t[3]["name"] == "00_00" and t[3]["domain"] == 4
    assert t[0]["label_unet"].sum() == int((raw(t.cases[0][1][0]) == 0).sum())  # S = native 384: same count


def test_random_box():
    rng = np.random.default_rng(0)
    size, areas, ratios = 64, [], []
    for _ in range(500):
        m = transforms.random_box(size, rng)
        assert m.shape == (size, size) and m.dtype == bool
        ys, xs = np.nonzero(m)
        h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        assert m.sum() == h * w  # one solid rectangle, not clipped by the border
        areas.append(m.sum() / size ** 2)
        ratios.append(h / w)
    # rounding of h and w to whole pixels widens the ranges slightly
    assert 0.015 < min(areas) and max(areas) < 0.42 and min(areas) < 0.05 and max(areas) > 0.35
    assert 0.27 < min(ratios) and max(ratios) < 1 / 0.27 and min(ratios) < 0.4 and max(ratios) > 2.5
    touching = [transforms.random_box(size, rng) for _ in range(200)]
    assert any(m[0].any() for m in touching) and any(m[-1].any() for m in touching)  # reaches the borders


# ----------------------------------------------------------------------------- bad input
def test_missing_data_root(tmp_path):
    with pytest.raises(data.DataError) as e:
        data.check_root("fundus", tmp_path / "Fundus")
    msg = str(e.value)
    assert str(tmp_path / "Fundus") in msg and "Domain{1..4}/{train,test}/ROIs" in msg and "Datasets" in msg
    (tmp_path / "Fundus" / "Domain1").mkdir(parents=True)
    with pytest.raises(data.DataError, match="Domain2, Domain3, Domain4"):
        data.list_cases("fundus", tmp_path / "Fundus", 1, "train")


def test_bad_domain_dataset_and_flags(shared_data):
    root = shared_data / "Fundus"
    with pytest.raises(data.DataError, match=r"--domain 5: expected 1\.\.4"):
        data.list_cases("fundus", root, 5, "train")
    with pytest.raises(data.DataError, match="--domain 0"):
        data.split_labeled("fundus", root, 0)
    with pytest.raises(data.DataError, match="--dataset 'retina'"):
        data.list_cases("retina", root, 1, "train")
    with pytest.raises(data.DataError, match=r"--labeled 2: asks for 2 .* only 1 training"):
        data.split_labeled("fundus", root, 1, labeled=2)
    with pytest.raises(data.DataError, match="--labeled-ratio 1.5"):
        data.split_labeled("fundus", root, 1, labeled_ratio=1.5)
    with pytest.raises(data.DataError, match="split 'val'"):
        data.list_cases("fundus", root, 1, "val")


def test_corrupt_png(tmp_path):
    root = make_fundus(tmp_path / "F", {(1, "train"): ["a.png", "b.png"]})
    base = root / "Domain1/train/ROIs"
    (base / "image/a.png").write_bytes(b"this is not a png")
    good = (base / "image/b.png").read_bytes()
    (base / "mask/b.png").write_bytes(good[: len(good) // 2])  # truncated
    (a, am), (b, bm) = data.list_cases("fundus", root, 1, "train")
    with pytest.raises(data.DataError, match=r"image/a\.png: unreadable or corrupt"):
        data.load_case("fundus", a, am)
    with pytest.raises(data.DataError, match=r"mask/b\.png: unreadable or corrupt"):
        data.load_case("fundus", b, bm)


def test_mask_values_outside_encoding(tmp_path):
    root = make_fundus(tmp_path / "F", {(1, "train"): ["a.png"]})
    m = root / "Domain1/train/ROIs/mask/a.png"
    arr = raw(m).copy()
    arr[0, :3] = 77
    arr[1, 0] = 200
    save(m, arr)
    (i, ms), = data.list_cases("fundus", root, 1, "train")
    with pytest.raises(data.DataError, match=r"mask/a\.png: fundus mask values \{77, 200\}"):
        data.load_case("fundus", i, ms)
    with pytest.raises(data.DataError, match="0, 255"):
        data.decode_mask("prostate", np.array([[0, 128]], np.uint8))
    with pytest.raises(data.DataError, match="channels"):
        data.decode_mask("fundus", np.array([[[0, 128, 255]]], np.uint8))
    with pytest.raises(data.DataError, match="outside 0..2"):
        data.encode_mask("fundus", np.array([[3]]))


def test_image_and_mask_size_differ(tmp_path):
    root = make_fundus(tmp_path / "F", {(1, "train"): ["a.png"]})
    save(root / "Domain1/train/ROIs/mask/a.png", np.full((40, 48, 3), 255, np.uint8))
    (i, ms), = data.list_cases("fundus", root, 1, "train")
    with pytest.raises(data.DataError, match=r"mask/a\.png: mask size 48x40 differs from image .*a\.png size 48x48"):
        data.load_case("fundus", i, ms)


@pytest.mark.parametrize("other_run_first", [False, True])
def test_synthetic_generated_whole_or_not_at_all(tmp_path, monkeypatch, other_run_first):
    # data.dataset_root writes the set into a private folder and renames it when complete, so a run never
    # reads a half-written set; when another run completed the same set first, ours is dropped without error
    import train
    monkeypatch.setitem(data.PRESETS["synthetic"], "n_train", 1)
    monkeypatch.setitem(data.PRESETS["synthetic"], "n_test", 1)
    final = tmp_path / "synthetic_s9"
    real, written = synthetic.synthesize, []

    def watched(out, **kw):
        assert Path(out) != final and not final.exists()  # nothing at the final name while writing
        written.append(Path(out))
        real(out, **kw)
        if other_run_first:
            real(final, **kw)  # the other run's rename lands before ours
        return Path(out)

    monkeypatch.setattr(synthetic, "synthesize", watched)
    root = data.dataset_root({"dataset": "synthetic", "data_root": str(tmp_path), "data_seed": 9})
    assert root == final and written[0].parent == tmp_path
    assert len(list(root.rglob("*.png"))) == 16  # 4 domains x (1 train + 1 test) x (image + mask)
    assert [p.name for p in tmp_path.iterdir()] == ["synthetic_s9"]  # no private folder left behind
