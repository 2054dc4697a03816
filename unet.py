"""The conventional model of SynFoC: a plain 2D U-Net trained from scratch (METHOD.md §2).

    UNet(in_channels, num_classes, width=64)   forward(x[B,in,H,W]) -> logits[B,C,H,W]
    UNet(3, 3, 16, input_norm="unit", norm="group")   # the synthetic CPU preset (--unet-norm, --unet-layer)

Architecture (the paper's / official one): 4 down and 4 up levels with widths w, 2w, 4w, 8w, 16w;
every stage is [3x3 conv (no bias) -> BatchNorm -> ReLU] x 2; going down is a 2x2 max-pool, going up
is a ConvTranspose(kernel 2, stride 2) that halves the channels, followed by concatenation with the
skip connection of the same level; a 1x1 conv head gives C class logits (softmax over channels is the
caller's business). No dropout. width 64 = the paper (31,037,763 parameters for 3 -> 3 classes);
width 16 is the CPU preset. H and W must be divisible by 16 (four 2x poolings), e.g. 256, 288, 384.
norm="group" swaps every BatchNorm for GroupNorm(8) (same parameter count): batch statistics of 2 images fit
no domain at evaluation (EXPERIMENTS.md "The embedded default"). input_norm: "unit" (x as given, /255 by the loader),
"minmax" (each image to [0,1] by its own range), "zscore" (each image and channel to mean 0, std 1).
"""
import torch
import torch.nn as nn


def norm2d(kind: str, c: int) -> nn.Module:
    """The feature normalisation after each conv: "batch" (the paper's) or "group" (GroupNorm, 8 groups:
    no batch statistics, so eval mode computes exactly what training did)."""
    return nn.BatchNorm2d(c) if kind == "batch" else nn.GroupNorm(min(8, c), c)


class DoubleConv(nn.Sequential):
    """[3x3 conv (no bias: a norm follows) -> norm -> ReLU] x 2; keeps the spatial size."""

    def __init__(self, c_in: int, c_out: int, norm: str = "batch"):
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), norm2d(norm, c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), norm2d(norm, c_out), nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """ConvTranspose 2x up (c_in -> c_in/2), concat the skip (c_in/2), DoubleConv(c_in -> c_out)."""

    def __init__(self, c_in: int, c_out: int, norm: str = "batch"):
        super().__init__()
        self.up = nn.ConvTranspose2d(c_in, c_in // 2, kernel_size=2, stride=2)
        self.conv = DoubleConv(c_in, c_out, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)  # [B,c_in,h,w] -> [B,c_in/2,2h,2w]
        return self.conv(torch.cat([skip, x], dim=1))  # [B,c_in,2h,2w] -> [B,c_out,2h,2w]


class UNet(nn.Module):
    """U-Net with widths (w, 2w, 4w, 8w, 16w); logits at the input resolution."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 64, input_norm: str = "unit",
                 norm: str = "batch"):
        super().__init__()
        if input_norm not in ("unit", "minmax", "zscore") or norm not in ("batch", "group"):
            raise ValueError(f"input_norm {input_norm!r} / norm {norm!r}: expected unit|minmax|zscore, batch|group")
        self.input_norm = input_norm  # per-image scaling before the first conv (module docstring)
        w = [width * 2**i for i in range(5)]  # 64 -> [64, 128, 256, 512, 1024]
        self.inc = DoubleConv(in_channels, w[0], norm)
        self.downs = nn.ModuleList(DoubleConv(w[i], w[i + 1], norm) for i in range(4))
        self.pool = nn.MaxPool2d(2)
        self.ups = nn.ModuleList(Up(w[i + 1], w[i], norm) for i in reversed(range(4)))
        self.head = nn.Conv2d(w[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x float[B,in,H,W] (H, W divisible by 16) -> logits float[B,C,H,W]."""
        if x.shape[-2] % 16 or x.shape[-1] % 16:
            raise ValueError(f"UNet input size {tuple(x.shape[-2:])} must be divisible by 16")
        if self.input_norm == "minmax":
            lo, hi = x.amin(dim=(1, 2, 3), keepdim=True), x.amax(dim=(1, 2, 3), keepdim=True)  # [B,1,1,1]
            x = (x - lo) / (hi - lo).clamp_min(1e-8)
        elif self.input_norm == "zscore":  # each image and channel to mean 0, std 1: removes colour casts
            mu, sd = x.mean(dim=(2, 3), keepdim=True), x.std(dim=(2, 3), keepdim=True)  # [B,in,1,1]
            x = (x - mu) / sd.clamp_min(1e-6)
        skips = [self.inc(x)]  # [B,w,H,W]
        for down in self.downs:
            skips.append(down(self.pool(skips[-1])))  # level i+1: [B,w*2^(i+1),H/2^(i+1),W/2^(i+1)]
        x = skips.pop()  # bottleneck [B,16w,H/16,W/16]
        for up in self.ups:
            x = up(x, skips.pop())  # each level doubles the size and halves the channels
        return self.head(x)  # [B,C,H,W]
