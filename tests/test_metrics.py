"""metrics.py: every metric against a brute-force reference and against medpy (the oracle, 2D and 3D),
bit for bit; the 95th percentile against numpy; the volume rule of data.volume_id."""
import numpy as np
import pytest

import data
import metrics


@pytest.fixture
def mb():
    """medpy's binary metrics, the oracle (requirements.txt; the project never imports it). Imported here, not at
    module level, so collecting this file never fails where medpy is absent (the GPU machine: bench/gpu_check.sh)."""
    return pytest.importorskip("medpy.metric.binary")


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
    got = metrics.part_metrics(pred, gt)
    for k in metrics.METRICS:
        assert got[k] == pytest.approx(ref[k], rel=1e-12, abs=1e-12), k
    assert metrics.dice(pred, gt) == pytest.approx(ref["dice"], rel=1e-12)
    assert metrics.jaccard(pred, gt) == pytest.approx(ref["jaccard"], rel=1e-12)
    assert metrics.hd95(pred, gt) == pytest.approx(ref["hd95"], rel=1e-12, abs=1e-12)
    assert metrics.asd(pred, gt) == pytest.approx(ref["asd"], rel=1e-12, abs=1e-12)
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


def test_large_noisy_surfaces_use_the_distance_transform_path_and_still_match():
    rng = np.random.default_rng(1)
    pred, gt = rng.random((48, 48)) < 0.5, rng.random((48, 48)) < 0.4
    n, m = len(brute_surface(pred)), len(brute_surface(gt))
    assert n * m > metrics._PAIRS_MAX  # the branch that uses the distance transform of the crop
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
    # ring surface: outer rim at distance 0 from the disc's surface, inner rim (radius 2..3) 1..2 away
    assert got["dice"] == pytest.approx(2 * ring.sum() / (ring.sum() + disc.sum()))
    assert 0 < got["asd"] < got["hd95"]
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
    assert metrics.part_metrics(full, full)["hd95"] == 0.0
    # identical masks
    got = check(multi, multi)
    assert got == dict(dice=1.0, jaccard=1.0, hd95=0.0, asd=0.0)
    # asymmetry of ASD: prediction surface -> ground truth only
    big, small = z.copy(), z.copy()
    big[1:11, 1:11], small[5:7, 5:7] = True, True
    assert metrics.asd(big, small) > metrics.asd(small, big)


def test_empty_mask_policy():
    z = np.zeros((8, 8), bool)
    m = z.copy()
    m[2:5, 3:6] = True
    assert metrics.part_metrics(z, z) == dict(dice=1.0, jaccard=1.0, hd95=0.0, asd=0.0)
    assert metrics.part_metrics(z, m) == dict(dice=0.0, jaccard=0.0, hd95=100.0, asd=100.0)
    assert metrics.part_metrics(m, z) == dict(dice=0.0, jaccard=0.0, hd95=100.0, asd=100.0)
    for f, both, one in ((metrics.dice, 1.0, 0.0), (metrics.jaccard, 1.0, 0.0),
                         (metrics.hd95, 0.0, 100.0), (metrics.asd, 0.0, 100.0)):
        assert f(z, z) == both and f(z, m) == one and f(m, z) == one, f.__name__


def test_case_metrics_nested_parts():
    gt = np.zeros((10, 10), np.int64)
    gt[2:8, 2:8] = 2
    gt[4:6, 4:6] = 1
    pred = gt.copy()
    pred[4:6, 4:6] = 2  # cup missed, disc (= cup ∪ rim) perfect
    cup, disc = metrics.case_metrics(pred, gt, FUNDUS_PARTS)
    assert cup == dict(dice=0.0, jaccard=0.0, hd95=100.0, asd=100.0)
    assert disc == dict(dice=1.0, jaccard=1.0, hd95=0.0, asd=0.0)


def test_identical_to_medpy(mb):
    rng = np.random.default_rng(2)
    for _ in range(20):
        pred, gt = blob((40, 50), rng, 4), blob((40, 50), rng, 4)
        if pred.any() and gt.any():
            got = metrics.part_metrics(pred, gt)
            assert got["dice"] == mb.dc(pred, gt) and got["jaccard"] == mb.jc(pred, gt)
            assert got["hd95"] == mb.hd95(pred, gt) and got["asd"] == mb.asd(pred, gt)




def blob3(shape, rng, n=3):
    """A few random boxes and balls in a [D,H,W] volume, some cut by its faces."""
    m = np.zeros(shape, bool)
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    for _ in range(n):
        if rng.random() < 0.5:
            lo = [int(rng.integers(-1, s)) for s in shape]
            hi = [a + int(rng.integers(1, 7)) for a in lo]
            m[tuple(slice(max(0, a), b) for a, b in zip(lo, hi))] = True
        else:
            c, r = [rng.uniform(0, s) for s in shape], rng.uniform(1, 5)
            m |= (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= r * r
    return m


def test_3d_identical_to_medpy_both_distance_paths(mb):
    rng = np.random.default_rng(3)
    paths = set()
    for i in range(24):
        shape = (int(rng.integers(3, 9)), int(rng.integers(8, 30)), int(rng.integers(8, 30)))
        if i % 4 == 0:  # speckle: large surfaces, the distance-transform path
            pred, gt = rng.random(shape) < 0.5, rng.random(shape) < 0.4
        else:
            pred, gt = blob3(shape, rng), blob3(shape, rng)
        if not (pred.any() and gt.any()):
            continue
        n, m = int(metrics.surface(pred).sum()), int(metrics.surface(gt).sum())
        paths.add(n * m > metrics._PAIRS_MAX)
        got = metrics.part_metrics(pred, gt)
        assert got["dice"] == mb.dc(pred, gt) and got["jaccard"] == mb.jc(pred, gt)
        assert got["hd95"] == mb.hd95(pred, gt) and got["asd"] == mb.asd(pred, gt)
    assert paths == {False, True}


def test_3d_hand_made():
    a, b = np.zeros((5, 9, 9), bool), np.zeros((5, 9, 9), bool)
    a[0, 1, 1], b[2, 3, 2] = True, True  # offsets (2, 2, 1): every distance is 3 voxels
    assert metrics.part_metrics(a, b) == dict(dice=0.0, jaccard=0.0, hd95=3.0, asd=3.0)
    # a 3x3x3 cube vs the same cube one slice deeper: 2 of 3 slices overlap
    c, d = np.zeros((6, 6, 6), bool), np.zeros((6, 6, 6), bool)
    c[1:4, 1:4, 1:4], d[2:5, 1:4, 1:4] = True, True
    got = metrics.part_metrics(c, d)
    assert got["dice"] == pytest.approx(2 * 18 / 54) and got["jaccard"] == pytest.approx(18 / 36)
    # surfaces: each cube minus its centre voxel; d is c moved one slice, so every surface voxel of either
    # has a surface voxel of the other at distance 0 or 1
    assert got["hd95"] == 1.0 and 0 < got["asd"] < 1
    assert metrics.part_metrics(c, np.zeros_like(c)) == dict(dice=0.0, jaccard=0.0, hd95=100.0, asd=100.0)


def test_surface_matches_scipy_erosion_in_2d_and_3d():
    from scipy import ndimage

    rng = np.random.default_rng(4)
    for shape in ((7, 9), (4, 6, 5), (1, 5, 5)):
        for _ in range(5):
            m = rng.random(shape) < 0.6
            cross = ndimage.generate_binary_structure(m.ndim, 1)
            want = m ^ ndimage.binary_erosion(m, structure=cross, border_value=0)
            assert (metrics.surface(m) == want).all()


def test_case_metrics_3d_label_maps_and_background_part(mb):
    rng = np.random.default_rng(5)
    pred, gt = rng.integers(0, 3, (4, 10, 12)), rng.integers(0, 3, (4, 10, 12))
    parts = [(1,), (1, 2), (0,)]
    got = metrics.case_metrics(pred, gt, parts)
    for part, g in zip(parts, got):
        p, t = metrics.part_mask(pred, part), metrics.part_mask(gt, part)
        assert g == dict(dice=mb.dc(p, t), jaccard=mb.jc(p, t), hd95=mb.hd95(p, t), asd=mb.asd(p, t))
    with pytest.raises(ValueError, match="same shape"):
        metrics.case_metrics(pred, gt[:2], parts)


def test_percentile95_is_numpys():
    rng = np.random.default_rng(6)
    for i in range(500):
        n = int(rng.integers(1, 60))
        x = np.sqrt(rng.integers(0, 50, n).astype(np.float64)) if i % 2 else rng.random(n) * 100
        assert metrics.percentile95(x) == np.percentile(x, 95)


def test_part_mask_union_of_classes():
    lab = np.array([[0, 1, 2], [2, 1, 3]])
    assert metrics.part_mask(lab, (1, 2)).tolist() == [[False, True, True], [True, True, False]]
    assert metrics.part_mask(lab, (3,)).tolist() == [[False, False, False], [False, False, True]]


# ----------------------------------------------------------------------------- volumes

def test_volume_id_on_the_real_sample_names(shared_data):
    names = sorted(p.name for p in (shared_data / "ProstateSlice").rglob("*.png"))
    assert {"00_00.png", "00_01.png"} <= set(names)
    for n in names:
        case, index = data.volume_id("prostate", n)
        assert (case, index) == (n.split("_")[0], int(n.split("_")[1][:-4]))
    assert data.volume_id("prostate", "12_034") == ("12", 34)
    assert data.volume_id("mnms", "012005.png") == ("012", 5)
    assert data.volume_id("mnms", "120031") == ("120", 31)


@pytest.mark.parametrize("dataset,name", [("prostate", "case7.png"), ("prostate", "00-01.png"),
                                          ("mnms", "12005.png"), ("mnms", "A12005.png"), ("fundus", "g0001.png")])
def test_volume_id_rejects_names_off_the_rule(dataset, name):
    with pytest.raises(data.DataError) as e:
        data.volume_id(dataset, name)
    msg = str(e.value)
    assert "\n" not in msg
    assert ("2D dataset" in msg) if dataset == "fundus" else (name in msg and "<" in msg)  # the file and the rule
