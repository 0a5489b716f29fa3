"""LayerNorm (+ SiLU gate, + the head) as our kernels compute it, against PyTorch's."""

import pytest
import torch


def _on_gpu(*values):
    return pytest.param(*values, marks=pytest.mark.gpu)


@pytest.mark.gpu
@pytest.mark.parametrize("channels", [96, 192, 1536, 20])
def test_fused_layer_norm_and_gate_match_pytorch_on_cuda(channels):
    """The Triton LayerNorm (inference) against nn.LayerNorm, with and without the SiLU gate
    read from a strided half of a wider tensor (as SS2D's z), fp32 and under bf16 autocast
    (both output dtypes)."""
    from napari_vmunet.ops.norm import layer_norm

    torch.manual_seed(channels)
    norm = torch.nn.LayerNorm(channels).cuda()
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = torch.randn(3, 17, 11, channels, device="cuda") * 3 + 1
    z = torch.randn(3, 17, 11, 2 * channels, device="cuda")[..., channels:]
    with torch.no_grad():
        for gate in (None, z):
            expected = norm(x) * (torch.nn.functional.silu(gate) if gate is not None else 1)
            got = layer_norm(x, norm, gate)
            assert got.dtype == torch.float32
            assert (got - expected).norm() / expected.norm() <= 1e-6
            with torch.autocast("cuda", dtype=torch.bfloat16):
                residual = layer_norm(x, norm, gate)
                half = layer_norm(x, norm, gate, feeds_matmul=True)
            # float32 where it becomes the residual stream (as nn.LayerNorm under autocast),
            # bf16 where a linear layer reads it
            assert residual.dtype == torch.float32
            assert (residual - expected).norm() / expected.norm() <= 1e-6
            assert half.dtype == torch.bfloat16
            assert (half.float() - expected).norm() / expected.norm() <= 1e-2


@pytest.mark.parametrize(
    ("device", "autocast", "gated"),
    [("cpu", False, True), _on_gpu("cuda", False, True), _on_gpu("cuda", True, True),
     _on_gpu("cuda", False, False), _on_gpu("cuda", True, False)])
def test_layer_norm_trains_as_pytorch(device, autocast, gated):
    """In training the LayerNorm is one autograd function that keeps only its input (and SS2D's
    ``out_norm(y) * silu(z)`` only y and z): the same result and the same gradients for the
    input, z (through the view of in_proj's output), the weight and the bias as nn.LayerNorm
    and F.silu, in float32 and (GPU) under bf16 autocast, where a result that feeds a linear
    layer is written in bf16. The ungated norm takes this path on the GPU only (the CPU keeps
    nn.LayerNorm, whose memory is the same)."""
    from napari_vmunet.ops.norm import layer_norm

    torch.manual_seed(0)
    norm = torch.nn.LayerNorm(96).to(device)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    y = (torch.randn(2, 12, 20, 96, device=device) * 3 + 1).requires_grad_()
    wide = torch.randn(2, 12, 20, 192, device=device, requires_grad=True)
    grad_out = torch.randn(2, 12, 20, 96, device=device)
    results = []
    for fused in (False, True):
        for t in (y, wide, norm.weight, norm.bias):
            t.grad = None
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            z = wide[..., 96:] if gated else None
            if fused:
                out = layer_norm(y, norm, z, feeds_matmul=True)
            else:
                out = norm(y) * (torch.nn.functional.silu(z) if gated else 1)
                if autocast:
                    out = out.to(torch.bfloat16)  # what the linear layer casts it to
        assert out.dtype == (torch.bfloat16 if autocast else torch.float32)
        (out.float() * grad_out).sum().backward()
        results.append([out.detach().float(), y.grad, norm.weight.grad, norm.bias.grad]
                       + ([wide.grad] if gated else []))
    if not gated:
        assert wide.grad is None
    tolerance = 1e-2 if autocast else 1e-5
    for got, expected in zip(results[1], results[0], strict=True):
        assert (got - expected).norm() / expected.norm() <= tolerance
    if gated:
        assert results[1][4][..., :96].abs().max() == 0  # nothing flows into in_proj's x half


@pytest.mark.parametrize("device", ["cpu", _on_gpu("cuda")])
@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("outputs", [1, 3])
def test_layer_norm_linear_is_the_head_on_the_norm(device, autocast, outputs):
    """The final expansion's norm with the segmentation head (a 1x1 convolution) on it, one
    kernel in GPU inference: F.linear(norm(x)) in the dtype F.linear gives, for 24 channels
    (config B's last width / 4) and rows that are not a multiple of the kernel's tile."""
    from napari_vmunet.ops.norm import layer_norm_linear

    torch.manual_seed(outputs)
    norm = torch.nn.LayerNorm(24).to(device)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    head = torch.nn.Conv2d(24, outputs, 1).to(device)
    x = torch.randn(2, 7, 5, 16, 24, device=device) * 3 + 1
    with torch.no_grad():
        expected = torch.nn.functional.linear(norm(x), head.weight.flatten(1), head.bias)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            got = layer_norm_linear(x, norm, head.weight.flatten(1), head.bias)
    assert got.shape == (2, 7, 5, 16, outputs)
    assert got.dtype == (torch.bfloat16 if autocast else torch.float32)
    tolerance = 1e-2 if autocast else 1e-6
    assert (got.float() - expected).norm() / expected.norm() <= tolerance
