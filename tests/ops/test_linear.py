"""The products that write float32 from the accumulator, against PyTorch's."""

import pytest
import torch


def _on_gpu(*values):
    return pytest.param(*values, marks=pytest.mark.gpu)


@pytest.mark.parametrize("device", ["cpu", _on_gpu("cuda")])
def test_linear_float32_keeps_the_products_float32_accumulator(device):
    """Under bf16 autocast on the GPU, SS2D's x_proj gives the float32 accumulator of the bf16
    product, which F.linear would round to bf16 (and the scan widen again); elsewhere, and
    with gradients, it is F.linear as it is."""
    from napari_vmunet.ops.linear import linear_float32

    torch.manual_seed(0)
    x = torch.randn(2, 8, 12, 192, device=device).bfloat16()
    weight = torch.randn(152, 192, device=device) * 0.1
    exact = torch.nn.functional.linear(x.float(), weight.bfloat16().float())
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
        got = linear_float32(x, weight)
        rounded = torch.nn.functional.linear(x, weight)
    if device == "cuda":
        assert got.dtype == torch.float32 and got.shape == rounded.shape
        # the same products, summed in float32: only the order of the additions differs
        assert (got - exact).norm() / exact.norm() <= 1e-6
        assert (got.bfloat16() != rounded).float().mean() < 0.05
    else:
        assert torch.equal(got, rounded)
    with torch.autocast(device, dtype=torch.bfloat16):
        trained = linear_float32(x, weight.requires_grad_())
    assert trained.dtype == torch.bfloat16 and trained.requires_grad
