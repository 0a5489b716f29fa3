"""SS2D's depthwise convolution + SiLU as our kernel computes it, against PyTorch's."""

import pytest
import torch


@pytest.mark.gpu
@pytest.mark.parametrize(("shape", "channels"), [((2, 64, 64), 192), ((1, 17, 45), 70),
                                                 ((3, 8, 5), 1536), ((1, 1, 1), 8)])
def test_fused_conv_silu_matches_pytorch_on_cuda(shape, channels):
    """The Triton depthwise 3x3 convolution + SiLU (inference) against nn.Conv2d and F.silu,
    reading the x half of a wider tensor in place (as SS2D's in_proj output): float32 in
    float32, and under bf16 autocast a float32 result for the scan and a bf16 one for x_proj.
    Sides that are not multiples of the kernel's tiles and a one-pixel image (all padding)."""
    from napari_vmunet.ops.conv import conv_silu

    torch.manual_seed(channels)
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1, groups=channels).cuda()
    wide = torch.randn(*shape, 2 * channels, device="cuda")
    x = wide[..., :channels]
    with torch.no_grad():
        expected = torch.nn.functional.silu(conv(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)
        got, for_proj = conv_silu(x, conv)
        assert got.dtype == torch.float32 and for_proj is got
        assert (got - expected).norm() / expected.norm() <= 1e-6
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got, for_proj = conv_silu(x.bfloat16(), conv)
    # the input rounded to bf16, the arithmetic in float32
    assert got.dtype == torch.float32 and for_proj.dtype == torch.bfloat16
    assert (got - expected).norm() / expected.norm() <= 1e-2
    assert torch.equal(for_proj, got.bfloat16())


@pytest.mark.gpu
@pytest.mark.parametrize("autocast", [False, True])
def test_fused_conv_silu_trains_as_pytorch_on_cuda(autocast):
    """With gradients the fused convolution + SiLU gives one result in the dtype PyTorch's
    modules give (bf16 under autocast) and PyTorch's gradients for x (through the view of the
    wider tensor), the weight and the bias."""
    from napari_vmunet.ops.conv import conv_silu

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(96, 96, 3, padding=1, groups=96).cuda()
    wide = torch.randn(2, 24, 40, 192, device="cuda", requires_grad=True)
    grad_out = torch.randn(2, 24, 40, 96, device="cuda")

    def pytorch(x):
        return torch.nn.functional.silu(conv(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)

    def fused(x):
        y, for_proj = conv_silu(x, conv)
        assert for_proj is y
        return y

    results = []
    for run in (pytorch, fused):
        conv.zero_grad()
        wide.grad = None
        # full float32 convolutions (cuDNN may otherwise round to TF32)
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                y = run(wide[..., :96])
            assert y.dtype == (torch.bfloat16 if autocast else torch.float32)
            (y.float() * grad_out).sum().backward()
        results.append((y.detach().float(), wide.grad, conv.weight.grad, conv.bias.grad))
    tolerance = 1e-2 if autocast else 1e-5
    for got, expected in zip(results[1], results[0], strict=True):
        assert (got - expected).norm() / expected.norm() <= tolerance
    assert results[1][1][..., 96:].abs().max() == 0  # nothing flows into the other half
