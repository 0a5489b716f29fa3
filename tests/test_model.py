"""The model layer: the authors' state_dict layout, config inference, forward semantics."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from napari_vmunet.model import PRESETS, VMUNet, VMUNetConfig, build_model, infer_config

SPEC_KEYS = Path(__file__).parent / "data" / "vmunet_isic_state_dict.txt"


def _spec_lines():
    return [ln for ln in SPEC_KEYS.read_text().splitlines() if ln and not ln.startswith("#")]


def _describe(state_dict):
    return [f"{k} {tuple(v.shape)} {v.numel()}" for k, v in state_dict.items()]


def test_isic_state_dict_equals_the_authors_key_list():
    model = build_model("isic")
    assert _describe(model.state_dict()) == _spec_lines()  # keys, order and shapes
    assert model.num_parameters() == 27_427_561
    assert all(p.requires_grad for p in model.parameters())


def test_synapse_differs_only_in_the_head():
    isic, synapse = build_model("isic").state_dict(), build_model("synapse").state_dict()
    assert list(isic) == list(synapse)
    differing = [k for k in isic if isic[k].shape != synapse[k].shape]
    assert differing == ["vmunet.final_conv.weight", "vmunet.final_conv.bias"]
    assert synapse["vmunet.final_conv.weight"].shape == (9, 24, 1, 1)
    assert sum(v.numel() for v in synapse.values()) == 27_427_761


@pytest.mark.parametrize("config", [
    PRESETS["isic"],
    PRESETS["synapse"],
    VMUNetConfig(num_classes=4, in_chans=1, dims=(48, 96, 192, 384), depths=(2, 2, 4, 2),
                 depths_decoder=(2, 4, 2, 1), d_state=8),
    VMUNetConfig(num_classes=2, dims=(16, 32, 64), depths=(1, 1, 1), depths_decoder=(1, 1, 1)),
])
def test_infer_config_recovers_the_architecture(config):
    state = VMUNet(config).state_dict()
    assert infer_config(state) == config
    assert infer_config({k.removeprefix("vmunet."): v for k, v in state.items()}) == config


def test_infer_config_rejects_other_networks():
    with pytest.raises(ValueError, match="not a VM-UNet"):
        infer_config(torch.nn.Linear(3, 3).state_dict())
    encoder_only = {k: v for k, v in build_model("isic").state_dict().items()
                    if "layers_up" not in k}
    with pytest.raises(ValueError, match="decoder"):
        infer_config(encoder_only)


def test_config_round_trips_through_a_dict():
    config = PRESETS["synapse"]
    assert VMUNetConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown"):
        VMUNetConfig.from_dict({**config.to_dict(), "depth": 3})
    with pytest.raises(ValueError, match="one entry per stage"):
        VMUNetConfig(dims=(96, 192), depths=(2, 2, 2))


def test_binary_forward_is_the_sigmoid_of_the_logits(tiny_model):
    x = torch.randn(2, 3, 64, 96)  # non-square works
    with torch.no_grad():
        probabilities = tiny_model(x)
        logits = tiny_model.forward_logits(x)
    assert probabilities.shape == (2, 1, 64, 96)
    assert torch.allclose(probabilities, torch.sigmoid(logits))
    assert 0 < probabilities.min() and probabilities.max() < 1


def test_multiclass_forward_returns_logits(tiny_config):
    model = VMUNet(VMUNetConfig(**{**tiny_config.to_dict(), "num_classes": 3})).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (1, 3, 32, 32)
    assert torch.equal(out, model.forward_logits(x))
    assert out.min() < 0 or out.max() > 1  # not probabilities


def test_one_channel_input_is_tiled_to_three(tiny_model):
    gray = torch.randn(1, 1, 32, 64)
    with torch.no_grad():
        assert torch.equal(tiny_model(gray), tiny_model(gray.repeat(1, 3, 1, 1)))


@pytest.mark.parametrize("shape, message", [
    ((1, 3, 80, 64), "multiples of 32, got 80x64; pad or resize to 96x64"),
    ((1, 2, 64, 64), "3-channel"),
    ((3, 64, 64), "batch, channels, height, width"),
])
def test_bad_input_shapes_get_a_clear_error(tiny_model, shape, message):
    with pytest.raises(ValueError, match=message):
        tiny_model(torch.randn(*shape))


def test_training_path_has_gradients_for_every_parameter(tiny_model):
    tiny_model.train()
    tiny_model.set_gradient_checkpointing(True)
    loss = tiny_model.forward_logits(torch.randn(2, 3, 32, 32)).square().mean()
    loss.backward()
    missing = [n for n, p in tiny_model.named_parameters() if p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in tiny_model.parameters())


def test_scan_backend_can_be_forced_per_model(tiny_model):
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        fast = tiny_model(x)
        tiny_model.set_scan_backend("reference")
        assert tiny_model.scan_backend_for("cpu") == "reference"
        slow = tiny_model(x)
    assert torch.allclose(fast, slow, rtol=1e-5, atol=1e-6)


def test_model_layer_imports_neither_qt_nor_napari():
    code = ("import sys, napari_vmunet.model, napari_vmunet.checkpoint, napari_vmunet.ops.scan; "
            "bad = [m for m in ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide6') "
            "if m in sys.modules];"
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.gpu
def test_model_on_cuda_matches_cpu(tiny_model):
    x = torch.randn(2, 1, 64, 96)
    with torch.no_grad():
        expected = tiny_model(x)
        gpu = tiny_model.to("cuda")
        got = gpu(x.cuda()).cpu()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            mixed = gpu(x.cuda()).float().cpu()
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5)
    # bf16 matmuls and norms written in bf16, float32 scan: bf16's precision, in norm
    assert (mixed - expected).norm() / expected.norm() < 1e-2
    loss = gpu.forward_logits(x.cuda()).square().mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in gpu.parameters())


@pytest.mark.gpu
def test_model_gradients_on_cuda_match_cpu(tiny_model):
    """Training on the GPU (the fused SS2D backward kernel, Triton) gives every parameter the
    gradient the CPU computes, in float32."""
    import copy

    x = torch.randn(2, 1, 64, 96, generator=torch.Generator().manual_seed(3))
    # eval(): no random drop path, so both devices compute the same function (gradients flow
    # all the same)
    models = {"cpu": tiny_model.eval(), "cuda": copy.deepcopy(tiny_model).cuda().eval()}
    grads = {}
    for device, model in models.items():
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # full fp32 convs
            model.forward_logits(x.to(device)).square().mean().backward()
        grads[device] = {name: p.grad.cpu() for name, p in model.named_parameters()}
    for name, expected in grads["cpu"].items():
        error = float((grads["cuda"][name] - expected).norm() / (expected.norm() + 1e-12))
        assert error <= 1e-4, f"{name}: relative error {error:.1e}"


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


def _on_gpu(*values):
    return pytest.param(*values, marks=pytest.mark.gpu)


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

