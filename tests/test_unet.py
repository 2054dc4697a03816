"""U-Net: output shapes for every dataset's class count and size, and the paper-size parameter count."""
import pytest
import torch

from unet import UNet


@pytest.mark.parametrize("num_classes", [2, 3, 4])
@pytest.mark.parametrize("size", [256, 288, 384])
def test_output_shape(num_classes, size):
    torch.manual_seed(0)
    net = UNet(in_channels=1 if num_classes != 3 else 3, num_classes=num_classes, width=8)
    x = torch.rand(2, net.inc[0].in_channels, size, size)
    y = net(x)
    assert y.shape == (2, num_classes, size, size)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()


def test_parameter_count_at_width_64():
    """Constructed, never run: the paper's U-Net (widths 64..1024) has about 31 M parameters."""
    def count(m):
        return sum(p.numel() for p in m.parameters())
    assert count(UNet(3, 3, 64)) == 31_037_763  # fundus (RGB, 3 classes)
    assert count(UNet(1, 2, 64)) == 31_036_546  # prostate / BUSI (gray, 2 classes)
    assert count(UNet(1, 2, 16)) == 1_942_306   # the CPU preset width


def test_architecture_and_gradients():
    net = UNet(1, 2, width=4)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 18 and all(c.bias is None for c in convs)  # 9 stages x 2, BN follows
    assert sum(isinstance(m, torch.nn.ConvTranspose2d) for m in net.modules()) == 4
    assert not any(isinstance(m, torch.nn.Dropout) for m in net.modules())
    net(torch.rand(2, 1, 32, 32)).logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_size_not_divisible_by_16():
    with pytest.raises(ValueError, match="divisible by 16"):
        UNet(1, 2, width=4)(torch.rand(1, 1, 40, 40))


def test_group_norm_layer_has_no_batch_statistics():
    """--unet-layer group: every BatchNorm becomes a GroupNorm (same parameter count: weight + bias per
    channel), and eval mode computes exactly what train mode does (no running statistics)."""
    torch.manual_seed(0)
    bn, gn = UNet(3, 3, width=8), UNet(3, 3, width=8, norm="group")
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in gn.modules()) == 0
    assert sum(isinstance(m, torch.nn.GroupNorm) for m in gn.modules()) == \
        sum(isinstance(m, torch.nn.BatchNorm2d) for m in bn.modules()) == 18
    assert sum(p.numel() for p in gn.parameters()) == sum(p.numel() for p in bn.parameters())
    x = torch.rand(2, 3, 32, 32)
    gn.train()
    y_train = gn(x)
    assert torch.equal(gn.eval()(x), y_train)
    assert not torch.allclose(bn.train()(x), bn.eval()(x))  # BatchNorm does depend on the mode
    # per image: the other images of the batch do not change an image's output
    assert torch.allclose(gn(x[:1]), y_train[:1], atol=1e-5)


@pytest.mark.parametrize("norm", ["minmax", "zscore"])
def test_input_norm_is_per_image(norm):
    """minmax: invariant to a per-image gain/offset; zscore: to a per-image, per-channel gain/offset."""
    torch.manual_seed(0)
    net = UNet(3, 3, width=4, input_norm=norm).eval()
    x = torch.rand(2, 3, 32, 32)
    gain = torch.tensor([0.5, 2.0]).view(2, 1, 1, 1) if norm == "minmax" else torch.rand(2, 3, 1, 1) + 0.2
    assert torch.allclose(net(x), net(x * gain + 0.1), atol=1e-4)
    assert not torch.allclose(UNet(3, 3, width=4).eval()(x), UNet(3, 3, width=4).eval()(x * gain + 0.1), atol=1e-4)


def test_bad_norm_names():
    with pytest.raises(ValueError, match="expected"):
        UNet(1, 2, width=4, norm="layer")
    with pytest.raises(ValueError, match="expected"):
        UNet(1, 2, width=4, input_norm="z")
