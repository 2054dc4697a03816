"""Benchmark of metrics.py (Dice, Jaccard, HD95, ASD) against medpy, in 2D per slice and in 3D per volume.

    python bench/metrics.py                         # 1000 slices 256x256 and 20 volumes 24x256x256, 3 parts each
    python bench/metrics.py --slices 200 --volumes 5 --size 384

Masks are realistic and deterministic (seed): per slice a cardiac-like label map with 3 classes (a
left-ventricle ellipse, a myocardium ring around it, a right-ventricle crescent), all with wobbly
boundaries; the "prediction" is the same anatomy shifted, rescaled and re-wobbled, plus a few false
positive specks, a missing structure now and then and some empty slices (so the empty-mask rules are
exercised too). A volume stacks such slices with the heart growing and shrinking along the slices (empty
at both ends). Metrics are computed per slice (or volume) and part from the label maps, as evaluate.py
does. With medpy importable it also runs medpy's dc/jc/hd95/asd on the same masks (with the empty-mask
rule of metrics.py, which medpy lacks), checks that every value is identical (float equality), and prints
both timings and the speed-up. Where the time goes: a profile of each side, grouped by step.
medpy is the tests' oracle, not a dependency of the project's code.
"""
from __future__ import annotations

import argparse
import cProfile
import importlib.util
import pstats
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the metrics live at the repo root
import metrics  # noqa: E402

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


def make_volumes(n: int, depth: int, size: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """n (prediction, ground truth) int64 label volumes [depth, size, size]: one heart per volume whose radius
    follows a sine along the slices (empty first and last slice), the prediction re-drawn per slice."""
    rng = np.random.default_rng(seed)
    vols = []
    s = size / 256
    for _ in range(n):
        p = dict(cy=rng.uniform(0.4, 0.6) * size, cx=rng.uniform(0.4, 0.6) * size, t=rng.uniform(0, np.pi),
                 rv=True, dy=rng.uniform(-10, 10) * s, dx=rng.uniform(25, 45) * s)
        r0 = rng.uniform(20, 40) * s
        gt = np.zeros((depth, size, size), np.int64)
        pred = np.zeros_like(gt)
        for z in range(1, depth - 1):
            pz = dict(p, r=r0 * (0.3 + 0.7 * np.sin(np.pi * z / (depth - 1))))
            gt[z] = _anatomy(size, pz, rng, wobble=0.05)
            q = dict(pz, cy=pz["cy"] + rng.normal(0, 1.5 * s), cx=pz["cx"] + rng.normal(0, 1.5 * s),
                     r=pz["r"] * rng.uniform(0.9, 1.1))
            pred[z] = _anatomy(size, q, rng, wobble=0.08)
        vols.append((pred, gt))
    return vols


def ours(pairs: list) -> list[dict]:
    return [m for pred, gt in pairs for m in metrics.case_metrics(pred, gt, PARTS)]


def medpy_metrics(pairs: list) -> list[dict]:
    from medpy.metric import binary as mb
    out = []
    for pred, gt in pairs:
        for part in PARTS:
            p, g = metrics.part_mask(pred, part), metrics.part_mask(gt, part)
            if not p.any() and not g.any():
                out.append({"dice": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0})
            elif not p.any() or not g.any():
                out.append({"dice": 0.0, "jaccard": 0.0, "hd95": metrics.PENALTY, "asd": metrics.PENALTY})
            else:
                out.append({"dice": mb.dc(p, g), "jaccard": mb.jc(p, g),
                            "hd95": float(mb.hd95(p, g)), "asd": float(mb.asd(p, g))})
    return out


# profiled functions -> the step they belong to, for each side (no function of a side's list calls another
# of the same list, so their times add up); the rest of the time is the loops and glue around them
OURS_STEPS = [("distances", ("surface_distances",)), ("surfaces", ("surface",)),
              ("part masks and crops", ("part_mask", "_box", "_label_box")), ("95th percentile", ("percentile95",)),
              ("dice / jaccard counts", ("count_nonzero",))]
MEDPY_STEPS = [("distances", ("distance_transform_edt",)), ("surfaces", ("binary_erosion",)),
               ("part masks", ("part_mask",)), ("95th percentile", ("percentile",)),
               ("dice / jaccard counts", ("count_nonzero",))]


def where_time_goes(fn, pairs: list, steps: list) -> str:
    """Shares of the profiled call's time per step (the profiler slows everything down; shares matter)."""
    prof = cProfile.Profile()
    prof.runcall(fn, pairs)
    stats = pstats.Stats(prof).stats
    total = max(ct for _, _, _, ct, _ in stats.values())  # the top call
    shares = {step: sum(ct for (_, _, name), (_, _, _, ct, _) in stats.items() if name in names) / total
              for step, names in steps}
    shares["loops and glue"] = max(0.0, 1 - sum(shares.values()))
    return ", ".join(f"{k} {100 * v:.0f}%" for k, v in sorted(shares.items(), key=lambda kv: -kv[1]))


def compare(label: str, unit: str, pairs: list, repeats: int, n_parts: int, with_medpy: bool) -> bool:
    """Time ours (best of repeats) and medpy once on the same label maps; print, check equality. False on a mismatch."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = ours(pairs)
        best = min(best, time.perf_counter() - t0)
    print(f"{label}: ours  {best:7.2f} s ({1e3 * best / n_parts:.3f} ms per {unit} and part)")
    print(f"    where the time goes: {where_time_goes(ours, pairs, OURS_STEPS)}")
    if not with_medpy:
        return True
    t0 = time.perf_counter()
    ref = medpy_metrics(pairs)
    tm = time.perf_counter() - t0
    print(f"{label}: medpy {tm:7.2f} s ({1e3 * tm / n_parts:.3f} ms per {unit} and part); "
          f"speed-up x{tm / best:.1f}")
    few = pairs[: max(1, len(pairs) // 10)]  # a tenth is enough to see where medpy's time goes
    print(f"    where medpy's time goes: {where_time_goes(medpy_metrics, few, MEDPY_STEPS)}")
    bad = [(i, k, a[k], b[k]) for i, (a, b) in enumerate(zip(res, ref)) for k in metrics.METRICS if a[k] != b[k]]
    print(f"    values: {n_parts * 4 - len(bad)} of {n_parts * 4} identical" + (f"; first mismatches {bad[:5]}" if bad else ""))
    return not bad


def build_parser() -> argparse.ArgumentParser:
    """The command line (tests/test_docs.py parses the README's commands with it)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slices", type=int, default=1000, help="number of 2D slices (0: skip 2D)")
    ap.add_argument("--volumes", type=int, default=20, help="number of 3D volumes (0: skip 3D)")
    ap.add_argument("--depth", type=int, default=24, help="slices per volume")
    ap.add_argument("--size", type=int, default=256, help="slice side in pixels")
    ap.add_argument("--seed", type=int, default=0, help="mask generator seed")
    ap.add_argument("--repeats", type=int, default=3, help="timing repeats of ours (best is reported)")
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    with_medpy = importlib.util.find_spec("medpy") is not None
    if not with_medpy:
        print("medpy: not installed (pip install medpy to time it side by side and check the values)")
    ok = True
    if args.slices:
        pairs = make_pairs(args.slices, args.size, args.seed)
        ok &= compare(f"2D ({len(pairs)} slices of {args.size}x{args.size}, {len(PARTS)} parts)", "slice", pairs,
                      args.repeats, len(pairs) * len(PARTS), with_medpy)
    if args.volumes:
        vols = make_volumes(args.volumes, args.depth, args.size, args.seed)
        ok &= compare(f"3D ({len(vols)} volumes of {args.depth}x{args.size}x{args.size}, {len(PARTS)} parts)", "volume",
                      vols,
                      args.repeats, len(vols) * len(PARTS), with_medpy)
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
