"""Every selective-scan backend against the float64 reference recurrence, forward and backward."""

import pytest
import torch

from napari_vmunet.ops import scan
from napari_vmunet.ops.scan import reference

NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")


def make_inputs(batch, channels, length, n_state=16, groups=4, delta_scale=1.0, seed=0,
                device="cpu"):
    """Random inputs shaped as VM-UNet passes them (delta before bias and softplus)."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    bshape = (batch, groups, n_state, length) if groups else (batch, n_state, length)
    inputs = dict(
        u=randn(batch, channels, length),
        delta=randn(batch, channels, length) * delta_scale,
        A=-torch.exp(randn(channels, n_state)),
        B=randn(*bshape),
        C=randn(*bshape),
        D=randn(channels),
        delta_bias=randn(channels) * 0.5 - 2.0,
    )
    return {k: v.to(device) for k, v in inputs.items()}


def relative_error(got, expected):
    got, expected = got.detach().double(), expected.detach().double()
    diff, scale = (got - expected).norm(), expected.norm()
    return float(diff / scale) if scale > 0 else float(diff)  # exact zeros (e.g. dA at L = 1)


def fast_backends(device="cpu"):
    return [n for n in scan.backend_names()
            if n != "reference" and scan.unavailable_reason(n, device) is None]


CPU_BACKENDS = fast_backends("cpu")


def test_a_fast_backend_exists_on_cpu():
    assert "cpu" in CPU_BACKENDS, scan.unavailable_reason("cpu", "cpu")
    assert scan.resolve_backend("cpu") == "cpu"


def _reference_float64(inputs, **kw):
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    out = reference.selective_scan(**leaves, **kw)
    return leaves, out


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("batch, channels, length, n_state, groups", [
    (2, 32, 50, 16, 4),       # grouped B/C as VM-UNet (K = 4, N = 16)
    (1, 4 * 24, 256, 16, 4),  # a 16x16 stage with K = 4 directions
    (3, 12, 33, 5, None),     # ungrouped B/C, odd sizes
    (2, 8, 1, 16, 2),         # a single position
])
def test_forward_and_backward_match_the_reference(backend, batch, channels, length, n_state,
                                                  groups):
    inputs = make_inputs(batch, channels, length, n_state, groups, seed=length)
    leaves64, out64 = _reference_float64(inputs, delta_softplus=True)
    leaves = {k: v.float().requires_grad_() for k, v in inputs.items()}
    out = scan.selective_scan(**leaves, delta_softplus=True, backend=backend)

    assert out.dtype == torch.float32 and out.shape == (batch, channels, length)
    assert relative_error(out, out64) <= 1e-5

    grad_out = torch.randn(out.shape, dtype=torch.float64)
    expected = torch.autograd.grad(out64, list(leaves64.values()), grad_out)
    got = torch.autograd.grad(out, list(leaves.values()), grad_out.float())
    for name, g, e in zip(NAMES, got, expected, strict=True):
        assert g.dtype == torch.float32, name
        assert relative_error(g, e) <= 1e-5, name


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_vmunet_first_stage_shape(backend):
    """Stage 0 of a 128x128 image: 4 directions x 192 channels, L = 32 * 32."""
    inputs = make_inputs(1, 4 * 192, 1024, seed=7)
    expected = reference.selective_scan(**inputs, delta_softplus=True)
    got = scan.selective_scan(**{k: v.float() for k, v in inputs.items()}, delta_softplus=True,
                              backend=backend)
    assert relative_error(got, expected) <= 1e-5


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_optional_arguments(backend):
    """No D, no bias, no softplus (delta must then be positive)."""
    inputs = make_inputs(2, 16, 40, groups=2, seed=3)
    inputs["delta"] = inputs["delta"].abs()
    del inputs["D"], inputs["delta_bias"]
    expected = reference.selective_scan(**inputs)
    got = scan.selective_scan(**{k: v.float() for k, v in inputs.items()}, backend=backend)
    assert relative_error(got, expected) <= 1e-5


@pytest.mark.parametrize("backend", [*CPU_BACKENDS, "reference"])
def test_large_delta_times_a_stays_finite_and_accurate(backend):
    """delta * |A| up to ~1e3: exp underflows to 0; no NaN, no denormal state."""
    inputs = make_inputs(1, 16, 200, seed=11, delta_scale=40.0)
    inputs["A"] = inputs["A"] * 20
    leaves = {k: v.float().requires_grad_() for k, v in inputs.items()}
    out = scan.selective_scan(**leaves, delta_softplus=True, backend=backend)
    assert torch.isfinite(out).all()
    tiny = (out.abs() < torch.finfo(torch.float32).tiny) & (out != 0)
    assert not tiny.any(), "denormal outputs"
    assert relative_error(out, reference.selective_scan(**inputs, delta_softplus=True)) <= 1e-5
    grads = torch.autograd.grad(out.sum(), list(leaves.values()))
    assert all(torch.isfinite(g).all() for g in grads)


def test_reference_is_float64_capable():
    inputs = make_inputs(1, 8, 20, seed=5)
    out = reference.selective_scan(**inputs, delta_softplus=True)
    assert out.dtype == torch.float64
    # one channel by hand
    u, dt, A = inputs["u"][0, 0], inputs["delta"][0, 0] + inputs["delta_bias"][0], inputs["A"][0]
    dt = torch.nn.functional.softplus(dt)
    B, C = inputs["B"][0, 0], inputs["C"][0, 0]
    h = torch.zeros(16, dtype=torch.float64)
    for t in range(20):
        h = torch.exp(dt[t] * A) * h + dt[t] * B[:, t] * u[t]
        assert torch.isclose(out[0, 0, t], (h * C[:, t]).sum() + inputs["D"][0] * u[t])


def test_environment_variable_forces_a_backend(monkeypatch):
    monkeypatch.setenv(scan.ENV_VAR, "reference")
    assert scan.resolve_backend("cpu") == "reference"
    assert scan.resolve_backend("cpu", "cpu") == "cpu"  # the argument wins
    monkeypatch.setenv(scan.ENV_VAR, "mamba")
    with pytest.raises(RuntimeError, match=r"'mamba' \(set by NAPARI_VMUNET_SCAN\).*cuda only"):
        scan.resolve_backend("cpu")
    monkeypatch.setenv(scan.ENV_VAR, "fastest")
    with pytest.raises(RuntimeError, match="unknown scan backend 'fastest'"):
        scan.resolve_backend("cpu")


def test_a_registered_backend_joins_the_automatic_choice(monkeypatch):
    monkeypatch.setattr(scan, "_REGISTRY", dict(scan._REGISTRY))
    monkeypatch.setattr(scan, "_PREFERENCE", {k: list(v) for k, v in scan._PREFERENCE.items()})
    scan.register_backend(
        scan.ScanBackend("plain", "napari_vmunet.ops.scan.reference", ("cpu",), "test double"),
        prefer_on=("cpu",),
    )
    assert scan.resolve_backend("cpu") == "plain"
    scan._load.cache_clear()


@pytest.mark.parametrize("release_can", [True, False])
def test_kernel_tuning_is_kept_on_disk_where_triton_can(monkeypatch, release_can):
    """Our kernels' launch configurations are tuned once per machine and shape, not once per
    session, with Triton releases that can keep them (3.3+); older ones get the same call
    without the argument they would reject."""
    import sys
    import types

    from napari_vmunet.ops.autotune import autotune

    calls = []

    def autotune_with_cache(configs, key, reset_to_zero=None, cache_results=False):
        calls.append(dict(configs=configs, key=key, cache_results=cache_results))

    def autotune_before_3_3(configs, key, reset_to_zero=None):
        calls.append(dict(configs=configs, key=key))

    fake = types.SimpleNamespace(
        autotune=autotune_with_cache if release_can else autotune_before_3_3)
    monkeypatch.setitem(sys.modules, "triton", fake)
    autotune(configs=["a", "b"], key=["length"])
    expected = dict(configs=["a", "b"], key=["length"])
    assert calls == [{**expected, "cache_results": True} if release_can else expected]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["reference", "mamba", "triton"])
@pytest.mark.parametrize("batch, channels, length, n_state, groups", [
    (2, 4 * 32, 300, 16, 4),   # grouped as VM-UNet, L not a multiple of any chunk
    (1, 4 * 24, 4096, 16, 4),  # stage 0 of a 256² image, long L
    (3, 12, 33, 8, None),      # ungrouped B/C, odd sizes
    (2, 8, 1, 16, 2),          # a single position
])
def test_cuda_backends_match_the_reference(backend, batch, channels, length, n_state, groups):
    if scan.unavailable_reason(backend, "cuda"):
        pytest.skip(scan.unavailable_reason(backend, "cuda"))
    if backend == "reference" and length > 1000:
        pytest.skip("the plain loop is too slow for long L")
    inputs = make_inputs(batch, channels, length, n_state, groups, seed=length)
    leaves64, out64 = _reference_float64(inputs, delta_softplus=True)
    leaves = {k: v.float().cuda().requires_grad_() for k, v in inputs.items()}
    out = scan.selective_scan(**leaves, delta_softplus=True, backend=backend)
    assert relative_error(out.cpu(), out64) <= 1e-5
    grad_out = torch.randn(out.shape, dtype=torch.float64)
    expected = torch.autograd.grad(out64, list(leaves64.values()), grad_out)
    got = torch.autograd.grad(out, list(leaves.values()), grad_out.float().cuda())
    for name, g, e in zip(NAMES, got, expected, strict=True):
        assert relative_error(g.cpu(), e) <= 1e-5, name


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_takes_half_precision_inputs(dtype):
    """bf16/fp16 u, delta, B, C (as under autocast), fp32 state: within 1e-2 of float64 on the
    same rounded inputs, forward and backward; no-grad inference (autotuned) agrees."""
    if scan.unavailable_reason("triton", "cuda"):
        pytest.skip(scan.unavailable_reason("triton", "cuda"))
    inputs = make_inputs(2, 4 * 48, 1024, seed=2)
    half = {k: (v.to(dtype) if k in ("u", "delta", "B", "C") else v.float()).cuda()
            for k, v in inputs.items()}
    leaves64, out64 = _reference_float64({k: v.double().cpu() for k, v in half.items()},
                                         delta_softplus=True)
    leaves = {k: v.clone().requires_grad_() for k, v in half.items()}
    out = scan.selective_scan(**leaves, delta_softplus=True, backend="triton")
    assert out.dtype == dtype
    assert relative_error(out.cpu(), out64) <= 1e-2
    grad_out = torch.randn(out.shape, dtype=torch.float64)
    expected = torch.autograd.grad(out64, list(leaves64.values()), grad_out)
    got = torch.autograd.grad(out, list(leaves.values()), grad_out.to(dtype).cuda())
    for name, g, e in zip(NAMES, got, expected, strict=True):
        assert relative_error(g.cpu(), e) <= 1e-2, name
    with torch.no_grad():
        again = scan.selective_scan(**half, delta_softplus=True, backend="triton")
    assert relative_error(again.cpu(), out64) <= 1e-2


@pytest.mark.gpu
def test_triton_is_chosen_first_on_cuda():
    if scan.unavailable_reason("triton", "cuda"):
        pytest.skip(scan.unavailable_reason("triton", "cuda"))
    assert scan.resolve_backend("cuda") == "triton"


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "mamba"])
def test_each_cuda_backend_runs_and_trains_the_model(backend):
    """The whole model on a backend against the same model on the plain loop: its logits in
    inference, and every parameter's gradient of a training loss (fine-tuning's path)."""
    from napari_vmunet.model import VMUNet, VMUNetConfig

    if scan.unavailable_reason(backend, "cuda"):
        pytest.skip(scan.unavailable_reason(backend, "cuda"))
    torch.manual_seed(0)
    config = VMUNetConfig(num_classes=1, dims=(16, 32, 64, 128), drop_path_rate=0.0)
    model = VMUNet(config).cuda()
    x = torch.rand(2, 3, 64, 96, device="cuda")
    target = (torch.rand(2, 1, 64, 96, device="cuda") > 0.5).float()

    def logits_and_gradients(name):
        model.set_scan_backend(name)
        model.eval()
        with torch.no_grad():
            logits = model.forward_logits(x)
        model.train()
        model.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model.forward_logits(x), target)
        loss.backward()
        return logits, torch.cat([p.grad.flatten() for p in model.parameters()])

    logits, gradients = logits_and_gradients(backend)
    expected_logits, expected_gradients = logits_and_gradients("reference")
    assert relative_error(logits, expected_logits) <= 1e-4
    assert relative_error(gradients, expected_gradients) <= 1e-4


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 8])  # 1 x 1024 rows: chunked form; 8 x 1024: sequential
def test_triton_inference_forms_match_the_reference(batch):
    if scan.unavailable_reason("triton", "cuda"):
        pytest.skip(scan.unavailable_reason("triton", "cuda"))
    inputs = make_inputs(batch, 4 * 256, 300, seed=batch, device="cuda")
    expected = reference.selective_scan(**inputs, delta_softplus=True)
    with torch.no_grad():
        got = scan.selective_scan(**{k: v.float() for k, v in inputs.items()},
                                  delta_softplus=True, backend="triton")
    assert relative_error(got, expected) <= 1e-5


def _ss2d_inputs(batch, height, width, channels, rank, n_state, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    k = 4
    return dict(
        x=randn(batch, height, width, channels),
        x_proj_weight=randn(k, rank + 2 * n_state, channels) / channels**0.5,
        dt_weight=randn(k, channels, rank) / rank**0.5,
        dt_bias=randn(k, channels) * 0.5 - 2.0,
        A=-torch.exp(randn(k, channels, n_state)),
        D=randn(k, channels),
    )


def _pixel_projection(x, x_proj_weight):
    k, c, d = x_proj_weight.shape
    return torch.nn.functional.linear(x, x_proj_weight.reshape(k * c, d)).unflatten(-1, (k, c))


def test_ss2d_composed_scan_is_the_authors_formulation():
    """Projecting pixels once, then reading them in each direction's order, is the authors'
    einsum over the four reordered copies of the image (their SS2D.forward_core)."""
    from napari_vmunet.ops.scan.composed import selective_scan_2d_composed

    i = _ss2d_inputs(2, 5, 7, 8, 3, 4, seed=1)
    b, h, w, d = i["x"].shape
    k, length, rank, n = 4, h * w, 3, 4
    x = i["x"].permute(0, 3, 1, 2)  # the authors' (B, D, H, W)
    x_hwwh = torch.stack([x.reshape(b, d, length), x.transpose(2, 3).reshape(b, d, length)], 1)
    xs = torch.cat([x_hwwh, x_hwwh.flip(-1)], dim=1)
    x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, i["x_proj_weight"])
    dts, Bs, Cs = torch.split(x_dbl, [rank, n, n], dim=2)
    dts = torch.einsum("bkrl,kdr->bkdl", dts, i["dt_weight"])
    ys = reference.selective_scan(xs.reshape(b, -1, length), dts.reshape(b, -1, length),
                                  i["A"].reshape(-1, n), Bs, Cs, i["D"].reshape(-1),
                                  delta_bias=i["dt_bias"].reshape(-1), delta_softplus=True)
    ys = ys.view(b, k, d, length)
    inv = ys[:, 2:4].flip(-1)
    wh = ys[:, 1].view(b, d, w, h).transpose(2, 3).reshape(b, d, length)
    invwh = inv[:, 1].view(b, d, w, h).transpose(2, 3).reshape(b, d, length)
    expected = (ys[:, 0] + inv[:, 0] + wh + invwh).view(b, d, h, w).permute(0, 2, 3, 1)

    got = selective_scan_2d_composed(i["x"], _pixel_projection(i["x"], i["x_proj_weight"]),
                                     i["dt_weight"], i["dt_bias"], i["A"], i["D"],
                                     scan=reference.selective_scan)
    assert relative_error(got, expected) <= 1e-12


def _fused_scan_and_reference(batch, height, width, channels, rank, n_state, dtype, seed):
    """The triton backend's fused scan (inference) of random inputs in ``dtype``, float32 on
    the GPU, and the composed scan of the same rounded inputs in float64."""
    from napari_vmunet.ops.scan.composed import selective_scan_2d_composed

    i = _ss2d_inputs(batch, height, width, channels, rank, n_state, seed=seed)
    proj = _pixel_projection(i["x"], i["x_proj_weight"])
    x, proj = i["x"].to(dtype), proj.to(dtype)
    params = [i[name] for name in ("dt_weight", "dt_bias", "A", "D")]
    expected = selective_scan_2d_composed(x.double(), proj.double(), *params,
                                          scan=reference.selective_scan)
    with torch.no_grad():
        got = scan.selective_scan_2d(x.cuda(), proj.cuda(), *(p.float().cuda() for p in params),
                                     backend="triton")
    assert got.dtype == torch.float32 and got.shape == x.shape
    return got, expected


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("batch, height, width, channels, rank, n_state, segmented", [
    (2, 16, 24, 96, 6, 16, True),    # H != W; few rows: L is scanned in segments
    (1, 64, 64, 192, 6, 16, True),   # stage 0 of a 256² image at batch 1: many segments
    (48, 16, 16, 128, 8, 16, False),  # enough rows: one pass over L
    (3, 5, 9, 20, 3, 8, False),      # odd sizes, channels not a multiple of any block
])
def test_triton_fused_ss2d_matches_the_composed_scan(batch, height, width, channels, rank,
                                                    n_state, segmented, dtype, tolerance):
    """The fused kernel (inference) against the composed scan in float64, on fp32 and bf16
    inputs (bf16: the float64 reference gets the same rounded inputs)."""
    from napari_vmunet.ops.scan import ss2d_triton

    if scan.unavailable_reason("triton", "cuda"):
        pytest.skip(scan.unavailable_reason("triton", "cuda"))
    got, expected = _fused_scan_and_reference(batch, height, width, channels, rank, n_state,
                                              dtype, seed=height * width)
    assert relative_error(got.cpu(), expected) <= tolerance
    assert (ss2d_triton.segments(batch, channels, height * width) > 1) == segmented


@pytest.mark.gpu
@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("batch, height, width, channels, rank, n_state", [
    (2, 16, 24, 96, 12, 16),     # L scanned in segments, two passes
    (48, 16, 16, 128, 24, 16),   # one pass over L
    (3, 5, 9, 20, 3, 8),         # odd sizes
])
def test_triton_forward_with_the_dt_product_matches_the_composed_scan(
        batch, height, width, channels, rank, n_state, autocast, monkeypatch):
    """The Triton forward reading dt_weight @ dt_low from one matrix product made before it
    (inference at config B's stages 1-3), forced onto every shape: against the composed scan
    in float64; under bf16 autocast the product is bf16, as the authors' einsum."""
    from napari_vmunet.ops.scan import ss2d_triton

    if scan.unavailable_reason("triton", "cuda"):
        pytest.skip(scan.unavailable_reason("triton", "cuda"))
    monkeypatch.setattr(ss2d_triton, "_takes_dt_product",
                        lambda rank, n_segments, checkpoint_every, device: not checkpoint_every)
    products = []
    product = ss2d_triton._dt_product
    monkeypatch.setattr(ss2d_triton, "_dt_product",
                        lambda *a: products.append(out := product(*a)) or out)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        got, expected = _fused_scan_and_reference(batch, height, width, channels, rank,
                                                  n_state, torch.float32, seed=rank)
    assert products and products[0].dtype == (torch.bfloat16 if autocast else torch.float32)
    assert relative_error(got.cpu(), expected) <= (1e-2 if autocast else 1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("batch, height, width, channels, rank, n_state", [
    (48, 16, 16, 128, 8, 16),  # 8 intervals of 32 steps, 4 blocks of 32 channels
    (3, 5, 9, 20, 3, 8),       # L = 45: a short last interval; a block of 20 channels
    (2, 33, 40, 18, 4, 16),    # 41.25 intervals; 18 channels: the 4-byte atomics
])
def test_gluon_fused_forward_matches_the_composed_scan(batch, height, width, channels, rank,
                                                       n_state, dtype, tolerance, monkeypatch):
    """The Gluon forward kernel (inference), forced onto shapes the Triton one would scan, and
    over the whole L: against the composed scan in float64, on fp32 and bf16 inputs."""
    from napari_vmunet.ops.scan import ss2d_gluon, ss2d_triton

    if scan.unavailable_reason("triton", "cuda"):
        pytest.skip(scan.unavailable_reason("triton", "cuda"))
    monkeypatch.setattr(ss2d_gluon, "_failure", None)
    monkeypatch.setattr(ss2d_gluon, "_FORWARD_MIN_LENGTH", 0)
    monkeypatch.setattr(ss2d_triton, "segments", lambda *args: 1)
    launches = []
    launch = ss2d_gluon.forward
    monkeypatch.setattr(ss2d_gluon, "forward", lambda *a: launches.append(1) or launch(*a))
    got, expected = _fused_scan_and_reference(batch, height, width, channels, rank, n_state,
                                              dtype, seed=channels)
    assert launches and ss2d_gluon._failure is None  # the Gluon kernel built and ran
    assert relative_error(got.cpu(), expected) <= tolerance


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("batch, height, width, channels, rank, n_state", [
    (2, 16, 24, 96, 6, 16),  # H != W
    (3, 5, 9, 20, 3, 8),     # L = 45: the last checkpoint interval is short; channel tails
    (4, 32, 32, 64, 8, 16),  # a longer walk back: 32 checkpoint intervals
])
@pytest.mark.parametrize("kernel", ["gluon", "gluon-even-states", "triton"])
def test_triton_fused_ss2d_gradients_match_the_composed_scan(batch, height, width, channels,
                                                            rank, n_state, dtype, tolerance,
                                                            kernel, monkeypatch):
    """Both fused backward kernels (Gluon where it applies, with every state or only the even
    steps' kept in its scratch; Triton elsewhere), each after its own forward kernel, which
    keeps the checkpoints the backward starts from: gradients of x, the pixel projections and
    all four parameters against autograd through the composed scan in float64."""
    from napari_vmunet.ops.scan import ss2d_gluon
    from napari_vmunet.ops.scan.composed import selective_scan_2d_composed

    if scan.unavailable_reason("triton", "cuda"):
        pytest.skip(scan.unavailable_reason("triton", "cuda"))
    monkeypatch.setattr(ss2d_gluon, "_failure", None)
    if kernel == "triton":
        monkeypatch.setattr(ss2d_gluon, "usable", lambda *args: False)
    else:  # the test must run the Gluon kernel, where the package would
        assert ss2d_gluon.usable(rank, n_state, 32, torch.device("cuda"))
        even = kernel == "gluon-even-states"  # these small shapes would keep every state
        monkeypatch.setattr(ss2d_gluon, "keeps_even_states_only", lambda *args: even)
        monkeypatch.setattr(ss2d_gluon, "_FORWARD_MIN_LENGTH", 0)  # and walk too short a way
    i = _ss2d_inputs(batch, height, width, channels, rank, n_state, seed=channels)
    proj = _pixel_projection(i["x"], i["x_proj_weight"])
    inputs = [i["x"].to(dtype), proj.to(dtype)] + [i[k] for k in ("dt_weight", "dt_bias", "A",
                                                                   "D")]
    grad_out = torch.randn(i["x"].shape, generator=torch.Generator().manual_seed(5),
                           dtype=torch.float64)
    exact = [t.double().requires_grad_() for t in inputs]
    expected = torch.autograd.grad(
        selective_scan_2d_composed(*exact, scan=reference.selective_scan), exact, grad_out)
    ours = [t.float().cuda() if t.dtype == torch.float64 else t.cuda() for t in inputs]
    ours = [t.requires_grad_() for t in ours]
    got = torch.autograd.grad(scan.selective_scan_2d(*ours, backend="triton"), ours,
                              grad_out.float().cuda())
    names = ("x", "proj", "dt_weight", "dt_bias", "A", "D")
    for name, g, e, t in zip(names, got, expected, ours, strict=True):
        assert g.dtype == t.dtype, name
        assert relative_error(g.double().cpu(), e) <= tolerance, name
    assert ss2d_gluon._failure is None  # the Gluon kernel built and ran: no fallback


def test_the_gluon_backward_keeps_even_states_only_where_its_scratch_leaves_l2():
    """The rule, with an H100's 132 SMs and 50 MiB of L2 and 32 KiB of scratch a program (32
    states of 16 x 16): the shapes it was measured at (benchmarks/RESULTS.md)."""
    from napari_vmunet.ops.scan import ss2d_gluon

    def even(batch, channels):
        programs = batch * 4 * channels // 16
        return ss2d_gluon.keeps_even_states_only(programs, 32 * 1024, 132, 50 * 2**20)

    # a 256² batch of 32, stages 0-2 (192, 384, 768 channels): 0.71-0.87 of the time
    assert even(32, 192) and even(32, 384) and even(32, 768)
    assert even(8, 384)  # 0.92
    assert not even(8, 192) and not even(2, 192)  # 1.14 and 1.15: slower


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", ["forward", "backward"])
def test_a_gluon_kernel_that_fails_to_build_falls_back_to_triton(kernel, monkeypatch):
    """If Triton's experimental Gluon cannot build a kernel (a release changed its API),
    training goes on with the Triton kernels, says so once, and its gradients are the same."""
    from napari_vmunet.ops.scan import ss2d_gluon

    if scan.unavailable_reason("triton", "cuda"):
        pytest.skip(scan.unavailable_reason("triton", "cuda"))
    monkeypatch.setattr(ss2d_gluon, "_FORWARD_MIN_LENGTH", 0)  # the Gluon forward runs too
    i = _ss2d_inputs(2, 16, 24, 96, 6, 16, seed=3)
    proj = _pixel_projection(i["x"], i["x_proj_weight"])
    inputs = [t.float().cuda().requires_grad_() for t in (
        i["x"], proj, i["dt_weight"], i["dt_bias"], i["A"], i["D"])]
    grad_out = torch.randn(i["x"].shape, device="cuda")

    def gradients():
        return torch.autograd.grad(scan.selective_scan_2d(*inputs, backend="triton"), inputs,
                                   grad_out)

    monkeypatch.setattr(ss2d_gluon, "_failure", None)
    expected = gradients()  # the Gluon kernels
    assert ss2d_gluon._failure is None

    def broken(*args):
        raise RuntimeError("an API this kernel uses is gone")

    monkeypatch.setattr(ss2d_gluon, kernel, broken)
    with pytest.warns(RuntimeWarning, match="Triton ones are used instead.*API this kernel uses"):
        got = gradients()
    assert "RuntimeError" in ss2d_gluon._failure
    assert not ss2d_gluon.usable(6, 16, 32, torch.device("cuda"))  # not tried again
    for g, e in zip(got, expected, strict=True):
        assert relative_error(g.double().cpu(), e.double().cpu()) <= 1e-5
