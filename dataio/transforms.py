"""Image and label transforms of SynFoC (numpy, PIL, scipy): resizing to model inputs, training augmentations.

    x = to_input(img, size, channels)        # uint8 [H,W(,3)] or float32 [H,W,c] -> float32 [channels,size,size]
    lab = resize_label(label, h, w)          # int [H,W] -> [h,w], nearest by pixel centres (the numpy rule)
    img = resize_image(img, n)               # the same inputs -> float32 [n,n,c] in [0,1], bilinear (PIL)
    img, lab = weak_augment(img, lab, rng)   # float [n,n,c], int [n,n] -> the same shapes, aligned
    strong = strong_augment(img, rng, (0.5, 1.5), blur_scale=n / 512)   # float [n,n,c], photometric only
    box = random_box(S, rng)                 # bool [S,S]: the Eq. 1 copy-paste mask

The datasets in data.py use them (augment once at W = max(I, S), then resize to I and S); predict.py
preprocesses new images with to_input, as data.TestSet does, and resizes its label maps back with
resize_label. `rng` is a np.random.Generator; the datasets key it by (seed, sample, draw), so a resumed
run sees the same samples.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from scipy import ndimage


def resize_label(label: np.ndarray, h: int, w: int) -> np.ndarray:
    """Nearest resize of a label map [H,W] to [h,w] by pixel-centre sampling (exact for class ids): the one
    numpy rule of the project (datasets, and predict.py back to each image's size)."""
    H, W = label.shape[:2]
    if (H, W) == (h, w):
        return label
    iy = np.minimum(((np.arange(h) + 0.5) * H / h).astype(np.int64), H - 1)
    ix = np.minimum(((np.arange(w) + 0.5) * W / w).astype(np.int64), W - 1)
    return label[iy[:, None], ix[None, :]]




def resize_image(img: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize (PIL: antialiased when shrinking) of uint8 [H,W(,3)] or float32 [H,W,c] to
    [size,size,c] float32 in [0,1]. PIL, not torch: torch's thread pool stalls inside loader workers."""
    if img.dtype == np.uint8:
        if img.shape[:2] != (size, size):
            img = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
        return (img if img.ndim == 3 else img[..., None]).astype(np.float32) / 255.0
    if img.shape[:2] == (size, size):
        return img
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(img[..., k])).resize((size, size), Image.BILINEAR))
                     for k in range(img.shape[2])], -1).clip(0, 1)


def _chw(img: np.ndarray, channels: int) -> torch.Tensor:
    """float32 [H,W,c] -> tensor [channels,H,W]; gray is repeated explicitly when 3 channels are asked."""
    if img.shape[2] != channels:
        img = np.repeat(img[..., :1], channels, -1) if img.shape[2] == 1 else img.mean(-1, keepdims=True)
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32))


def to_input(img: np.ndarray, size: int, channels: int) -> torch.Tensor:
    """An image (uint8 [H,W(,3)] or float32 [H,W,c]) as a model input: float32 [channels,size,size] in [0,1].
    The one preprocessing of every model input, also for new images in predict.py."""
    return _chw(resize_image(img, size), channels)


def weak_augment(img: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """METHOD.md §5 weak view of a square float image [n,n,c] and label [n,n], each op with p 0.5: scale-crop
    (scale U(1,1.5) per axis), rotation (integer degrees in [-20,20], fill 0 = background), horizontal
    flip, elastic (alpha 2n, sigma 0.08n). The ops are composed into one sampling map so the image is
    interpolated once and image and label stay aligned exactly."""
    n = img.shape[0]
    use = rng.random(4) < 0.5
    scale, offs, angle = rng.uniform(1.0, 1.5, 2), rng.random(2), int(rng.integers(-20, 21))
    if not use.any():
        return img, label
    y, x = np.mgrid[0:n, 0:n].astype(np.float32)
    if use[3]:  # elastic (the last op, so the first one inverted); field drawn at <=128 px for speed
        f = max(1, n // 128)
        m = -(-n // f)
        d = [ndimage.gaussian_filter(rng.uniform(-1, 1, (m, m)).astype(np.float32), 0.08 * n / f, mode="constant")
             * (2 * n / f) for _ in range(2)]  # /f keeps the displacement spread of a full-size field
        if f > 1:
            d = [ndimage.zoom(a, n / m, order=1)[:n, :n] for a in d]
        y, x = np.clip(y + d[0], 0, n - 1), np.clip(x + d[1], 0, n - 1)
    if use[2]:
        x = (n - 1) - x
    if use[1]:
        c, t = (n - 1) / 2, math.radians(angle)
        y, x = (c + math.cos(t) * (y - c) - math.sin(t) * (x - c), c + math.sin(t) * (y - c) + math.cos(t) * (x - c))
    if use[0]:  # scale up to round(n*s), crop an n x n window at a random offset
        big = np.round(n * scale).astype(int)
        o = np.floor(offs * (big - n + 1))
        y, x = (y + o[0] + 0.5) * n / big[0] - 0.5, (x + o[1] + 0.5) * n / big[1] - 0.5
    coords = np.stack([y, x])
    out = np.stack([ndimage.map_coordinates(img[..., k], coords, order=1, mode="constant", cval=0.0)
                    for k in range(img.shape[2])], -1)
    lab = ndimage.map_coordinates(label, coords, order=0, mode="constant", cval=0)
    return out, lab


def strong_augment(img: np.ndarray, rng: np.random.Generator, strong_range: tuple[float, float],
                   blur_scale: float = 1.0) -> np.ndarray:
    """Photometric only (pixel-aligned with its input): brightness and contrast factors U(strong_range),
    then Gaussian blur sigma U(0.1, 2.0) in 512-pixel units, as the official code blurs its 512-pixel
    images (blur_scale = W/512 converts to the working resolution W of `img`)."""
    b, c = rng.uniform(*strong_range, 2)
    sigma = rng.uniform(0.1, 2.0) * blur_scale
    out = np.clip(img * b, 0, 1)
    gray = out @ np.array([0.299, 0.587, 0.114], np.float32) if out.shape[2] == 3 else out[..., 0]
    out = np.clip((out - gray.mean()) * c + gray.mean(), 0, 1)
    return ndimage.gaussian_filter(out, (sigma, sigma, 0)).astype(np.float32)


def random_box(size: int, rng: np.random.Generator) -> np.ndarray:
    """Eq. 1 box mask bool [size,size]: area fraction U(0.02,0.4), aspect (h/w) U(0.3,1/0.3), fully
    inside (redrawn until it fits)."""
    while True:
        area, ratio = rng.uniform(0.02, 0.4) * size * size, rng.uniform(0.3, 1 / 0.3)
        h, w = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
        if 1 <= h <= size and 1 <= w <= size:
            break
    y, x = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
    m = np.zeros((size, size), bool)
    m[y:y + h, x:x + w] = True
    return m
