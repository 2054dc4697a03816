"""A synthetic mixed-domain fundus-like set: anyone can generate it, in seconds, on a CPU.

    python -m dataio.synthetic --out data/synthetic --seed 0                    # what train.py generates on first use
    python -m dataio.synthetic --out DIR --seed 3 --n-train 40 --n-test 16 --size 256

Four domains share one task (optic cup inside optic disc, on a textured background with vessels) and
differ in appearance only, like the four hospitals of the Fundus benchmark: colours, gamma, contrast,
blur, noise, illumination gradient, and (domain 4) smaller discs. Files are written in the Fundus layout
and mask encoding (data.PRESETS["synthetic"] reads them): <out>/Domain{1..4}/{train,test}/ROIs/{image,mask}/
d<k>_<split>_<i>.png, plus <out>/synthetic.json (seed and sizes). Same seed -> the same files.
`python train.py --data-seed N` trains on the set of seed N (generated into data/synthetic_s<N>).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from dataio.cases import encode_mask
from dataio.spec import PRESETS, DataError

# Per-domain appearance: background/disc/cup colours, gamma, contrast, blur, noise, illumination
# gradient, disc radius range (fraction of the image side). Domain 1 clean reddish-orange, 2 dark,
# low-contrast and blurred, 3 greenish and noisy, 4 bright washed-out with a strong gradient, small discs.
_STYLES = [
    dict(bg=(0.72, 0.30, 0.12), disc=(0.95, 0.70, 0.40), cup=(1.0, 0.92, 0.72), gamma=1.0, contrast=1.0,
         blur=0.0, noise=0.01, grad=0.1, radius=(0.14, 0.22)),
    dict(bg=(0.30, 0.16, 0.12), disc=(0.45, 0.32, 0.25), cup=(0.52, 0.42, 0.35), gamma=1.5, contrast=0.7,
         blur=2.5, noise=0.02, grad=0.2, radius=(0.15, 0.24)),
    dict(bg=(0.22, 0.50, 0.25), disc=(0.55, 0.85, 0.50), cup=(0.75, 0.97, 0.70), gamma=0.9, contrast=1.1,
         blur=0.5, noise=0.13, grad=0.2, radius=(0.12, 0.20)),
    dict(bg=(0.74, 0.62, 0.60), disc=(0.92, 0.84, 0.80), cup=(1.0, 1.0, 1.0), gamma=0.7, contrast=0.65,
         blur=1.0, noise=0.03, grad=0.7, radius=(0.07, 0.12)),
]


def _ellipse(y: np.ndarray, x: np.ndarray, cy: float, cx: float, a: float, b: float, phi: float) -> np.ndarray:
    """Normalised elliptical radius (<= 1 inside)."""
    u = (x - cx) * math.cos(phi) + (y - cy) * math.sin(phi)
    v = -(x - cx) * math.sin(phi) + (y - cy) * math.cos(phi)
    return np.sqrt((u / a) ** 2 + (v / b) ** 2)


def _waves(rng: np.random.Generator, n: int, k: int, fmax: float) -> np.ndarray:
    """Smooth texture float32 [n,n] in [-1, 1]: the mean of k plane waves with random frequency (<= fmax
    cycles per image), direction and phase; sin(a+b) = sin a cos b + cos a sin b makes it two matmuls."""
    f, t, ph = rng.uniform(1, fmax, k), rng.uniform(0, 2 * math.pi, k), rng.uniform(0, 2 * math.pi, k)
    c = (np.arange(n) / n)[:, None]
    u, v = 2 * math.pi * f * np.cos(t) * c, 2 * math.pi * f * np.sin(t) * c + ph  # [n,k] along x, along y
    return ((np.cos(v) @ np.sin(u).T + np.sin(v) @ np.cos(u).T) / k).astype(np.float32)


def _synth_one(rng: np.random.Generator, st: dict, n: int) -> tuple[np.ndarray, np.ndarray]:
    """-> (image uint8 [n,n,3], label int64 [n,n]) of one synthetic fundus ROI."""
    y, x = np.mgrid[0:n, 0:n].astype(np.float32) / n
    # disc radius, eccentricity, rotation, centre; cup/disc ratio, cup offset, axis jitter, rotation jitter.
    # .tolist() gives python floats, which keep the float32 arrays float32 (numpy scalars would not)
    r, ecc, phi, cy, cx, ratio, oy, ox, sa, sb, dphi = rng.uniform(
        [st["radius"][0], 0.85, 0, 0.32, 0.32, 0.3, -0.12, -0.12, 0.9, 0.9, -0.5],
        [st["radius"][1], 1.15, math.pi, 0.68, 0.68, 0.7, 0.12, 0.12, 1.1, 1.1, 0.5]).tolist()
    oy, ox = oy * r, ox * r
    rd = _ellipse(y, x, cy, cx, r * ecc, r / ecc, phi)
    rc = _ellipse(y, x, cy + oy, cx + ox, r * ecc * ratio * sa, r / ecc * ratio * sb, phi + dphi)
    disc, cup = rd <= 1, (rc <= 1) & (rd <= 1)
    label = np.where(cup, 1, np.where(disc, 2, 0)).astype(np.int64)
    soft_d = 1 / (1 + np.exp(np.minimum((rd - 1) / 0.04, 50)))  # soft edges centred on the mask boundaries
    soft_c = soft_d / (1 + np.exp(np.minimum((rc - 1) / 0.08, 50)))
    tex = _waves(rng, n, 6, 4) * 0.15 + _waves(rng, n, 6, 16) * 0.06
    jit = lambda c: (np.asarray(c) * rng.uniform(0.92, 1.08, 3)).astype(np.float32)  # noqa: E731
    img = jit(st["bg"]) * (1 + tex)[..., None]
    img = img * (1 - soft_d[..., None]) + jit(st["disc"]) * soft_d[..., None]
    img = img * (1 - soft_c[..., None]) + jit(st["cup"]) * soft_c[..., None]
    # vessels: random-walk curves leaving the disc centre, splatted as points and blurred to a width
    nv, steps = int(rng.integers(6, 11)), 3 * n // 2
    theta = rng.uniform(0, 2 * math.pi, (nv, 1)) + np.cumsum(rng.normal(0, 0.05, (nv, steps)), 1)
    py = cy * n + np.cumsum(np.sin(theta), 1)
    px = cx * n + np.cumsum(np.cos(theta), 1)
    keep = (py >= 0) & (py < n) & (px >= 0) & (px < n)
    acc = np.zeros((n, n), np.float32)
    np.add.at(acc, (py[keep].astype(int), px[keep].astype(int)), 1.0)
    vessels = np.clip(ndimage.gaussian_filter(acc, n / 200) * 3.0, 0, 1)
    img = img * (1 - 0.55 * vessels)[..., None]
    psi = float(rng.uniform(0, 2 * math.pi))  # illumination gradient in a random direction
    img = img * (1 + st["grad"] * ((x - 0.5) * math.cos(psi) + (y - 0.5) * math.sin(psi)))[..., None]
    img = np.clip(img, 0, 1) ** st["gamma"]
    img = (img - 0.5) * st["contrast"] + 0.5
    if st["blur"]:
        img = ndimage.gaussian_filter(img, (st["blur"] * n / 256, st["blur"] * n / 256, 0))
    img = img + (st["noise"] * math.sqrt(12)) * (rng.random(img.shape, dtype=np.float32) - 0.5)  # uniform, std = noise
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), label


def synthesize(out: str | Path, seed: int = 0, n_train: int = 40, n_test: int = 16, size: int = 256) -> Path:
    """Write the synthetic mixed-domain set in the Fundus layout and mask encoding:
    <out>/Domain{1..4}/{train,test}/ROIs/{image,mask}/d<k>_<split>_<i>.png. Deterministic for a seed."""
    if n_train < 1 or n_test < 1 or size < 32:
        raise DataError(f"--n-train {n_train} --n-test {n_test} --size {size}: expected >= 1, >= 1, >= 32")
    out = Path(out)
    if out.is_dir() and any(out.iterdir()):  # regenerate in place, but never delete someone else's folder
        if not (out / "synthetic.json").is_file():
            raise DataError(f"--out {out}: folder exists and is not a synthetic set (no synthetic.json); "
                            "expected a new or previously generated folder")
        for k in range(1, len(_STYLES) + 1):
            shutil.rmtree(out / f"Domain{k}", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)  # the marker first, so an interrupted run can be redone in place
    (out / "synthetic.json").write_text(json.dumps(dict(seed=seed, n_train=n_train, n_test=n_test, size=size)))

    def write(job: tuple[int, int, str, int]) -> None:
        k, s, split, i = job
        img, lab = _synth_one(np.random.default_rng([seed, k, s, i]), _STYLES[k - 1], size)
        base, name = out / f"Domain{k}" / split / "ROIs", f"d{k}_{split}_{i:03d}.png"
        Image.fromarray(img).save(base / "image" / name, compress_level=0)  # noise: zlib gains ~nothing
        Image.fromarray(encode_mask("fundus", lab)).save(base / "mask" / name, compress_level=1)

    jobs = [(k, s, split, i) for k in range(1, len(_STYLES) + 1)
            for s, (split, count) in enumerate((("train", n_train), ("test", n_test))) for i in range(count)]
    for k, split, sub in {(j[0], j[2], sub) for j in jobs for sub in ("image", "mask")}:
        (out / f"Domain{k}" / split / "ROIs" / sub).mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:  # numpy and zlib release the GIL
        list(pool.map(write, jobs))  # each image has its own generator: the output does not depend on threads
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dataio.synthetic", description="Write the synthetic mixed-domain set (Fundus layout).")
    ap.add_argument("--out", default="data/synthetic", help="output folder (default data/synthetic)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (same seed -> same files)")
    ap.add_argument("--n-train", type=int, default=PRESETS["synthetic"]["n_train"], help="train images per domain")
    ap.add_argument("--n-test", type=int, default=PRESETS["synthetic"]["n_test"], help="test images per domain")
    ap.add_argument("--size", type=int, default=256, help="image side in pixels")
    args = ap.parse_args(argv)
    try:
        out = synthesize(args.out, args.seed, args.n_train, args.n_test, args.size)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(_STYLES) * (args.n_train + args.n_test)} images to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
