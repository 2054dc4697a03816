"""Benchmark of evaluate.py's metrics (Dice, Jaccard, HD95, ASD), with medpy side by side when installed.

    python bench_metrics.py                  # 1000 slices of 256x256, 3 parts (the issue's workload)
    python bench_metrics.py --slices 200 --size 384

Masks are realistic and deterministic (seed): per slice a cardiac-like label map with 3 classes (a
left-ventricle ellipse, a myocardium ring around it, a right-ventricle crescent), all with wobbly
boundaries; the "prediction" is the same anatomy shifted, rescaled and re-wobbled, plus a few false
positive specks, a missing structure now and then and some empty slices (so the empty-mask rules are
exercised too). Metrics are computed per slice and part from the label maps, as evaluate.py does.
With medpy importable it also runs medpy's dc/jc/hd95/asd on the same masks (same empty-mask policy,
SPEC §6) and checks that every value is identical (exact float equality), then prints both timings.
medpy is not a dependency of the project.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import evaluate

PARTS = [(1,), (2,), (3,)]  # LV, MYO, RV


def _blob(shape: tuple[int, int], cy: float, cx: float, ry: float, rx: float, theta: float,
          rng: np.random.Generator, wobble: float) -> np.ndarray:
    """Boolean ellipse with a smooth random radial perturbation (a few low-frequency harmonics)."""
    coef = [(wobble * float(np.clip(rng.normal(), -3, 3)) / k, rng.uniform(0, 2 * np.pi)) for k in range(2, 6)]
    reach = (1 + sum(abs(a) for a, _ in coef)) * max(ry, rx) + 2  # the blob lies inside this window
    y0, y1 = max(0, int(cy - reach)), min(shape[0], int(cy + reach) + 1)
    x0, x1 = max(0, int(cx - reach)), min(shape[1], int(cx + reach) + 1)
    out = np.zeros(shape, dtype=np.bool_)
    if y0 >= y1 or x0 >= x1:
        return out
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    y, x = yy - cy, xx - cx
    c, s = np.cos(theta), np.sin(theta)
    u, v = (c * x + s * y) / rx, (-s * x + c * y) / ry
    ang = np.arctan2(v, u)
    r = np.ones_like(ang)
    for k, (a, phase) in zip(range(2, 6), coef):
        r += a * np.cos(k * ang + phase)
    out[y0:y1, x0:x1] = u * u + v * v <= r * r
    return out


def _anatomy(size: int, p: dict, rng: np.random.Generator, wobble: float) -> np.ndarray:
    lab = np.zeros((size, size), dtype=np.int64)
    shape = (size, size)
    if p["rv"]:
        lab[_blob(shape, p["cy"] + p["dy"], p["cx"] + p["dx"], p["r"] * 1.3, p["r"] * 0.8, p["t"], rng, wobble)] = 3
    outer = _blob(shape, p["cy"], p["cx"], p["r"] * 1.35, p["r"] * 1.25, p["t"], rng, wobble)
    lab[outer] = 2
    lab[_blob(shape, p["cy"], p["cx"], p["r"], p["r"] * 0.9, p["t"], rng, wobble)] = 1
    return lab


def make_pairs(n: int, size: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """n (prediction, ground truth) int64 label maps [size, size], deterministic in seed."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        if i % 50 == 49:  # an empty slice (above/below the heart), predictions sometimes with specks
            gt = np.zeros((size, size), dtype=np.int64)
            pred = gt.copy()
            if i % 100 == 99:
                pred[rng.integers(0, size, 5), rng.integers(0, size, 5)] = 1
            pairs.append((pred, gt))
            continue
        s = size / 256
        p = dict(cy=rng.uniform(0.35, 0.65) * size, cx=rng.uniform(0.35, 0.65) * size,
                 r=rng.uniform(12, 40) * s, t=rng.uniform(0, np.pi), rv=rng.random() > 0.1,
                 dy=rng.uniform(-10, 10) * s, dx=rng.uniform(25, 45) * s)
        gt = _anatomy(size, p, rng, wobble=0.08)
        q = dict(p, cy=p["cy"] + rng.normal(0, 2 * s), cx=p["cx"] + rng.normal(0, 2 * s),
                 r=p["r"] * rng.uniform(0.85, 1.15), rv=p["rv"] and rng.random() > 0.05)
        pred = _anatomy(size, q, rng, wobble=0.12)
        for _ in range(rng.integers(0, 4)):  # false positive specks anywhere, incl. the image border
            y, x = rng.integers(0, size - 3, 2)
            pred[y: y + rng.integers(1, 4), x: x + rng.integers(1, 4)] = rng.integers(1, 4)
        pairs.append((pred, gt))
    return pairs


def ours(pairs: list) -> list[dict]:
    return [m for pred, gt in pairs for m in evaluate.case_metrics(pred, gt, PARTS)]


def medpy_metrics(pairs: list) -> list[dict]:
    from medpy.metric import binary as mb
    out = []
    for pred, gt in pairs:
        for part in PARTS:
            p, g = evaluate.part_mask(pred, part), evaluate.part_mask(gt, part)
            if not p.any() and not g.any():
                out.append({"dice": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0})
            elif not p.any() or not g.any():
                out.append({"dice": 0.0, "jaccard": 0.0, "hd95": 100.0, "asd": 100.0})
            else:
                out.append({"dice": mb.dc(p, g), "jaccard": mb.jc(p, g),
                            "hd95": float(mb.hd95(p, g)), "asd": float(mb.asd(p, g))})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slices", type=int, default=1000, help="number of slices")
    ap.add_argument("--size", type=int, default=256, help="slice side in pixels")
    ap.add_argument("--seed", type=int, default=0, help="mask generator seed")
    ap.add_argument("--repeats", type=int, default=3, help="timing repeats of ours (best is reported)")
    args = ap.parse_args()

    pairs = make_pairs(args.slices, args.size, args.seed)
    n = len(pairs) * len(PARTS)
    best = float("inf")
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        res = ours(pairs)
        best = min(best, time.perf_counter() - t0)
    print(f"ours : {best:6.2f} s for {len(pairs)} slices x {len(PARTS)} parts of {args.size}x{args.size} "
          f"({1e3 * best / n:.3f} ms per slice and part)")
    try:
        import medpy  # noqa: F401
    except ImportError:
        print("medpy: not installed (pip install medpy to time it side by side)")
        return
    t0 = time.perf_counter()
    ref = medpy_metrics(pairs)
    tm = time.perf_counter() - t0
    print(f"medpy: {tm:6.2f} s ({1e3 * tm / n:.3f} ms per slice and part); speed-up x{tm / best:.1f}")
    bad = [(i, k, a[k], b[k]) for i, (a, b) in enumerate(zip(res, ref)) for k in evaluate.METRICS if a[k] != b[k]]
    print(f"values: {n * 4 - len(bad)} of {n * 4} identical" + (f"; first mismatches {bad[:5]}" if bad else ""))
    if bad:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
