"""evaluate.py: metrics against brute force, aggregation, and the command line end to end on the real
Fundus sample files (a tiny model trained for one step)."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import data
import evaluate

ROOT = Path(__file__).resolve().parents[1]
FUNDUS_PARTS = [(1,), (1, 2)]


# ----------------------------------------------------------------------------- brute-force reference

def brute_surface(mask: np.ndarray) -> list[tuple[int, int]]:
    """Set pixels with at least one 4-neighbour unset; outside the image counts as unset."""
    h, w = mask.shape
    pts = []
    for y in range(h):
        for x in range(w):
            if not mask[y, x]:
                continue
            for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                yy, xx = y + dy, x + dx
                if not (0 <= yy < h and 0 <= xx < w) or not mask[yy, xx]:
                    pts.append((y, x))
                    break
    return pts


def brute_directed(a: list, b: list) -> np.ndarray:
    """For each point of a (in order), the Euclidean distance to the nearest point of b."""
    A, B = np.array(a, dtype=np.int64), np.array(b, dtype=np.int64)
    d2 = ((A[:, None, :] - B[None, :, :]) ** 2).sum(-1)
    return np.sqrt(d2.min(1).astype(np.float64))


def brute(pred: np.ndarray, gt: np.ndarray) -> dict:
    if not pred.any() and not gt.any():
        return dict(dice=1.0, jaccard=1.0, hd95=0.0, asd=0.0)
    inter, sp, sg = (pred & gt).sum(), pred.sum(), gt.sum()
    out = dict(dice=2 * inter / (sp + sg), jaccard=inter / (pred | gt).sum())
    if not pred.any() or not gt.any():
        return dict(out, hd95=100.0, asd=100.0)
    sp_, sg_ = brute_surface(pred), brute_surface(gt)
    d_pg, d_gp = brute_directed(sp_, sg_), brute_directed(sg_, sp_)
    return dict(out, hd95=np.percentile(np.concatenate([d_pg, d_gp]), 95), asd=d_pg.mean())


def check(pred, gt):
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    ref = brute(pred, gt)
    got = evaluate.part_metrics(pred, gt)
    for k in evaluate.METRICS:
        assert got[k] == pytest.approx(ref[k], rel=1e-12, abs=1e-12), k
    assert evaluate.dice(pred, gt) == pytest.approx(ref["dice"], rel=1e-12)
    assert evaluate.jaccard(pred, gt) == pytest.approx(ref["jaccard"], rel=1e-12)
    assert evaluate.hd95(pred, gt) == pytest.approx(ref["hd95"], rel=1e-12, abs=1e-12)
    assert evaluate.asd(pred, gt) == pytest.approx(ref["asd"], rel=1e-12, abs=1e-12)
    return got


def blob(shape, rng, n=3):
    """A few random rectangles and discs, some of them at the image border."""
    m = np.zeros(shape, bool)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for _ in range(n):
        if rng.random() < 0.5:
            y0, x0 = rng.integers(-2, shape[0]), rng.integers(-2, shape[1])
            m[max(0, y0): y0 + rng.integers(1, 8), max(0, x0): x0 + rng.integers(1, 8)] = True
        else:
            cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(1, 6)
            m |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    return m


# ----------------------------------------------------------------------------- metrics

def test_metrics_match_brute_force_on_random_masks():
    rng = np.random.default_rng(0)
    for i in range(60):
        shape = (int(rng.integers(5, 24)), int(rng.integers(5, 24)))
        if i % 3 == 0:  # speckle noise: many components and holes
            pred, gt = rng.random(shape) < rng.uniform(0.1, 0.7), rng.random(shape) < rng.uniform(0.1, 0.7)
        else:
            pred, gt = blob(shape, rng), blob(shape, rng)
        check(pred, gt)


def test_large_noisy_surfaces_use_the_kdtree_path_and_still_match():
    rng = np.random.default_rng(1)
    pred, gt = rng.random((48, 48)) < 0.5, rng.random((48, 48)) < 0.4
    n, m = len(brute_surface(pred)), len(brute_surface(gt))
    assert n * m > 300 * (n + m)  # the branch that uses k-d trees
    check(pred, gt)


def test_hand_made_masks():
    z = np.zeros((12, 12), bool)
    # two single pixels 3 rows and 4 columns apart: every surface distance is 5
    a, b = z.copy(), z.copy()
    a[2, 2], b[5, 6] = True, True
    got = check(a, b)
    assert got["hd95"] == 5.0 and got["asd"] == 5.0 and got["dice"] == 0.0
    # a ring (hole inside) vs the filled disc: the hole's rim is surface too
    yy, xx = np.mgrid[:12, :12]
    disc = (yy - 6) ** 2 + (xx - 6) ** 2 <= 16
    ring = disc & ((yy - 6) ** 2 + (xx - 6) ** 2 > 4)
    got = check(ring, disc)
    assert 0 < got["asd"] < got["hd95"] or got["hd95"] > 0
    # several components, one touching the image border on two sides
    multi = z.copy()
    multi[0:3, 0:3] = True
    multi[8:12, 9:12] = True
    multi[5, 5] = True
    check(multi, disc)
    check(disc, multi)
    # the full image: all its pixels on the image border are surface (outside = background)
    full = np.ones((6, 7), bool)
    inner = np.zeros((6, 7), bool)
    inner[2:4, 2:5] = True
    check(full, inner)
    assert evaluate.part_metrics(full, full)["hd95"] == 0.0
    # identical masks
    got = check(multi, multi)
    assert got == dict(dice=1.0, jaccard=1.0, hd95=0.0, asd=0.0)
    # asymmetry of ASD: prediction surface -> ground truth only
    big, small = z.copy(), z.copy()
    big[1:11, 1:11], small[5:7, 5:7] = True, True
    assert evaluate.asd(big, small) > evaluate.asd(small, big)


def test_empty_mask_policy():
    z = np.zeros((8, 8), bool)
    m = z.copy()
    m[2:5, 3:6] = True
    assert evaluate.part_metrics(z, z) == dict(dice=1.0, jaccard=1.0, hd95=0.0, asd=0.0)
    assert evaluate.part_metrics(z, m) == dict(dice=0.0, jaccard=0.0, hd95=100.0, asd=100.0)
    assert evaluate.part_metrics(m, z) == dict(dice=0.0, jaccard=0.0, hd95=100.0, asd=100.0)
    for f, both, one in ((evaluate.dice, 1.0, 0.0), (evaluate.jaccard, 1.0, 0.0),
                         (evaluate.hd95, 0.0, 100.0), (evaluate.asd, 0.0, 100.0)):
        assert f(z, z) == both and f(z, m) == one and f(m, z) == one, f.__name__


def test_case_metrics_nested_parts():
    gt = np.zeros((10, 10), np.int64)
    gt[2:8, 2:8] = 2
    gt[4:6, 4:6] = 1
    pred = gt.copy()
    pred[4:6, 4:6] = 2  # cup missed, disc (= cup ∪ rim) perfect
    cup, disc = evaluate.case_metrics(pred, gt, FUNDUS_PARTS)
    assert cup == dict(dice=0.0, jaccard=0.0, hd95=100.0, asd=100.0)
    assert disc == dict(dice=1.0, jaccard=1.0, hd95=0.0, asd=0.0)


def test_identical_to_medpy():
    mb = pytest.importorskip("medpy.metric.binary")
    rng = np.random.default_rng(2)
    for _ in range(20):
        pred, gt = blob((40, 50), rng, 4), blob((40, 50), rng, 4)
        if pred.any() and gt.any():
            got = evaluate.part_metrics(pred, gt)
            assert got["dice"] == mb.dc(pred, gt) and got["jaccard"] == mb.jc(pred, gt)
            assert got["hd95"] == mb.hd95(pred, gt) and got["asd"] == mb.asd(pred, gt)


# ----------------------------------------------------------------------------- aggregation

def test_aggregate_means_over_slices_then_domains_then_parts():
    def row(d, part, dice, hd):
        return dict(domain=d, part=part, dice=dice, jaccard=dice / 2, hd95=hd, asd=hd / 2)
    rows = [row(1, "cup", 0.2, 10), row(1, "cup", 0.4, 20), row(1, "cup", 0.6, 30),   # domain 1: 3 slices
            row(1, "disc", 0.8, 4), row(1, "disc", 1.0, 2), row(1, "disc", 0.9, 6),
            row(2, "cup", 0.0, 100), row(2, "disc", 0.5, 8),                           # domain 2: 1 slice
            row(4, "cup", 1.0, 0), row(4, "disc", 1.0, 0)]                             # domain 3: none
    s = evaluate.aggregate(rows, ["D1", "D2", "D3", "D4"], ["cup", "disc"])
    assert list(s["domains"]) == ["D1", "D2", "D4"]
    d1 = s["domains"]["D1"]
    assert d1["cup"]["dice"] == pytest.approx(0.4) and d1["cup"]["hd95"] == pytest.approx(20)
    assert d1["cup"]["jaccard"] == pytest.approx(0.2) and d1["cup"]["asd"] == pytest.approx(10)
    assert d1["disc"]["dice"] == pytest.approx(0.9) and d1["dice"] == pytest.approx(0.65) and d1["cases"] == 3
    # unweighted mean over domains (domain 1's three slices count as one domain)
    assert s["mean"]["cup"]["dice"] == pytest.approx((0.4 + 0.0 + 1.0) / 3)
    assert s["mean"]["disc"]["hd95"] == pytest.approx((4 + 8 + 0) / 3)
    assert s["mean"]["dice"] == pytest.approx(((0.4 + 0.0 + 1.0) / 3 + (0.9 + 0.5 + 1.0) / 3) / 2)
    table = evaluate.format_table(s, ["cup", "disc"], "t")
    lines = [ln for ln in table.splitlines() if ln.startswith("| ")]
    assert [ln.split("|")[1].strip() for ln in lines[1:]] == ["D1 (3)", "D2 (1)", "D4 (1)", "**Mean**"]
    assert lines[1].rstrip(" |").endswith("65.00")  # domain 1 average DSC in %


# ----------------------------------------------------------------------------- pipeline pieces

class Threshold(torch.nn.Module):
    """A stand-in model: class 2 where the red channel is bright, class 1 where it is very bright, at `out`."""

    def __init__(self, out: int | None = None):
        super().__init__()
        self.out = out

    def forward(self, x):
        r = x[:, :1]
        logits = torch.cat([0.5 - r, 0.9 - (r - 0.3).abs() * 4, (r - 0.8) * 4], 1)
        return torch.nn.functional.interpolate(logits, size=(self.out, self.out), mode="bilinear") if self.out else logits


def test_evaluate_cases_rows_match_direct_computation(shared_data, tmp_path):
    root = shared_data / "Fundus"
    cases = data.test_cases("fundus", root)
    cfg = dict(unet_size=256, sam_size=64, parts=FUNDUS_PARTS, part_names=["cup", "disc"])
    models = {"unet": Threshold(), "medsam": Threshold(out=32)}
    rows, summaries = evaluate.evaluate_cases(models, "fundus", cases, cfg, torch.device("cpu"), batch_size=3,
                                              overlays=1, overlay_dir=tmp_path)
    assert len(rows) == 2 * len(cases) * 2
    ds = data.TestSet("fundus", cases, 64)
    for i, (path, _, dom) in enumerate(cases):
        item = ds[i]
        preds = evaluate.predict(models, item["img_unet"][None], item["img_sam"][None], 256, None)
        for name in models:
            want = evaluate.case_metrics(preds[name][0].numpy(), item["label_unet"].numpy(), FUNDUS_PARTS)
            got = [r for r in rows if r["model"] == name and r["name"] == Path(path).stem]
            assert [r["part"] for r in got] == ["cup", "disc"]
            assert all(r["domain"] == f"Domain{dom}" for r in got)
            for r, w in zip(got, want):
                assert {k: r[k] for k in evaluate.METRICS} == w
    assert set(summaries) == {"unet", "medsam"}
    assert list(summaries["unet"]["domains"]) == [f"Domain{k}" for k in range(1, 5)]
    assert len(list(tmp_path.glob("*.png"))) == 2 * 4  # one overlay per domain and model


def test_new_image_input_matches_testset(shared_data):
    path, masks, dom = data.test_cases("fundus", shared_data / "Fundus")[0]
    item = data.TestSet("fundus", [(path, masks, dom)], 64)[0]
    img = evaluate.read_image(Path(path), 3)
    assert torch.allclose(data.to_input(img, 256, 3), item["img_unet"], atol=1e-6)
    assert torch.allclose(data.to_input(img, 64, 3), item["img_sam"], atol=1e-6)


def test_resize_label_nearest():
    lab = np.arange(16).reshape(4, 4)
    assert evaluate.resize_label(lab, 8, 8)[::2, ::2].tolist() == lab.tolist()
    assert evaluate.resize_label(lab, 2, 6).shape == (2, 6)


def test_overlay_draws_gt_contour_and_prediction():
    img = np.full((10, 10), 100, np.uint8)
    gt = np.zeros((10, 10), np.int64)
    gt[3:7, 3:7] = 1
    pred = np.zeros_like(gt)
    pred[0:2, 0:2] = 2
    o = evaluate.overlay(img, pred, gt, [(1,)])
    assert o.shape == (10, 10, 3) and o.dtype == np.uint8
    assert o[3, 3].tolist() == [0, 255, 0] and o[5, 5].tolist() == [100, 100, 100]
    assert o[0, 0].tolist() != [100, 100, 100] and o[9, 9].tolist() == [100, 100, 100]


# ----------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def run_dir(shared_data, tmp_path_factory):
    """A tiny SynFoC run (tiny random SAM, width-4 U-Net, 1 step) on the real Fundus sample files."""
    import train

    out = tmp_path_factory.mktemp("run") / "r"
    return train.train(["--dataset", "fundus", "--data-root", str(shared_data), "--domain", "1", "--labeled", "1",
                        "--sam", "tiny", "--unet-width", "4", "--batch", "1", "1", "--steps", "1",
                        "--eval-every", "1", "--device", "cpu", "--amp", "off", "--out", str(out)])


def cli(argv, capsys):
    """evaluate.main in-process -> (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as e:
        evaluate.main([str(a) for a in argv])
    cap = capsys.readouterr()
    return e.value.code, cap.out, cap.err


def test_evaluate_checkpoint_end_to_end(run_dir, tmp_path, capsys):
    out = tmp_path / "ev"
    code, stdout, err = cli([run_dir / "last.pt", "--model", "both", "--overlays", "1", "--out", out,
                             "--device", "cpu"], capsys)
    assert code == 0, err
    for f in ("results.json", "table.md", "per_case.csv"):
        assert (out / f).is_file(), f
    table = (out / "table.md").read_text()
    for k in range(1, 5):
        assert table.count(f"| Domain{k} (1) |") == 2  # a row per domain, for each of the two models
    assert table.count("**Mean**") == 2 and "cup HD95" in table and "disc ASD" in table
    assert "| Domain3 (1) |" in stdout
    res = json.loads((out / "results.json").read_text())
    assert set(res["models"]) == {"medsam", "unet"} and res["step"] == 1
    assert list(res["models"]["medsam"]["domains"]) == [f"Domain{k}" for k in range(1, 5)]
    # train.py evaluated the same students on the same test split: the same mean Dice, so the students
    # (with the tiny SAM's unsaved random encoder, rebuilt from the seed) are restored exactly
    ck = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
    assert res["models"]["medsam"]["headline_dice"] == pytest.approx(ck["best_dice"], abs=1e-6)
    with open(out / "per_case.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 4 * 2 and set(rows[0]) == {"model", "domain", "name", "part", *evaluate.METRICS}
    overlays = sorted(p.name for p in (out / "overlays").glob("*.png"))
    assert len(overlays) == 8 and "medsam_Domain1_gdrishtiGS_001.png" in overlays
    # defaults: --model medsam, a run folder means its last.pt, --out next to it; the train split works too
    code, _, err = cli([run_dir, "--split", "train", "--limit", "1", "--device", "cpu"], capsys)
    assert code == 0, err
    res = json.loads((run_dir / "eval_last" / "results.json").read_text())
    assert list(res["models"]) == ["medsam"] and res["split"] == "train"


def test_segment_new_images(run_dir, shared_data, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    fundus = Image.open(next((shared_data / "Fundus/Domain2/test/ROIs/image").glob("*.png"))).convert("RGB")
    fundus.resize((300, 200)).save(src / "rgb.png")
    fundus.convert("L").resize((120, 160)).save(src / "gray.jpg")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (src / "notes.txt").write_text("ignored")
    out = tmp_path / "out"
    code, stdout, err = cli([run_dir / "last.pt", "--images", src, "--out", out, "--device", "cpu"], capsys)
    assert code == 1  # the broken file is reported, the rest is written
    bad = [ln for ln in err.splitlines() if "broken.png" in ln]
    assert len(bad) == 1 and "Traceback" not in err
    for name, size in (("rgb", (300, 200)), ("gray", (120, 160))):
        mask = Image.open(out / f"{name}.png")
        assert mask.size == size
        data.decode_mask("fundus", np.asarray(mask))  # in the dataset's encoding (raises otherwise)
        assert Image.open(out / f"{name}_overlay.png").size == size
    assert not (out / "broken.png").exists() and not (out / "notes.png").exists()
    # the output folder may not be the input folder (the masks would overwrite the images)
    code, _, err = cli([run_dir / "last.pt", "--images", src, "--out", src], capsys)
    assert code == 2 and err.startswith("error: ")


def test_bad_input_is_one_line_exit_2(run_dir, shared_data, tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a zip file")
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": torch.zeros(2)}, foreign)
    cases = [
        ([tmp_path / "missing.pt"], "not found"),
        ([junk], "corrupt"),
        ([foreign], "not a SynFoC checkpoint"),
        ([run_dir / "last.pt", "--data-root", tmp_path / "nowhere"], "--data-root"),
        ([run_dir / "last.pt", "--data-root", shared_data / "ProstateSlice"], "holds prostate"),
        ([run_dir / "last.pt", "--model", "sideways"], "invalid choice"),
        ([run_dir / "last.pt", "--images", tmp_path / "nowhere", "--out", tmp_path / "o"], "--images"),
    ]
    for argv, needle in cases:
        code, _, err = cli(argv, capsys)
        assert code == 2, (argv, err)
        assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, (argv, err)


def test_model_missing_from_checkpoint(run_dir):
    ck = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
    ck["sam"] = None
    assert evaluate.which_models(ck, None) == ["unet"]
    with pytest.raises(evaluate.EvalError, match="no medsam"):
        evaluate.which_models(ck, "both")


def test_cli_subprocess_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), str(tmp_path / "nope.pt")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
