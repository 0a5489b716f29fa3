"""The one rule for where our Triton kernels run, and the switch to plain PyTorch."""

import pytest
import torch

from napari_vmunet.ops import gate


@pytest.fixture
def fresh_gate():
    gate._reason.cache_clear()
    yield
    gate._reason.cache_clear()


def test_cpu_tensors_never_run_triton():
    assert not gate.runs_triton(torch.zeros(3))
    assert gate.triton_unavailable_reason("cpu")


def test_an_old_gpu_is_refused_with_its_capability(monkeypatch, fresh_gate):
    monkeypatch.setattr(gate, "_triton_version", lambda: (3, 6))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (6, 1))
    assert "compute capability 7.0 or newer, found 6.x" in gate.triton_unavailable_reason("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    gate._reason.cache_clear()
    assert gate.triton_unavailable_reason("cuda") is None


def test_an_old_triton_is_refused(monkeypatch, fresh_gate):
    monkeypatch.setattr(gate, "_triton_version", lambda: (2, 3))
    assert "triton 3.0 or newer" in gate.triton_unavailable_reason("cuda")


def test_the_reference_switch_means_plain_pytorch(monkeypatch):
    monkeypatch.delenv(gate.SCAN_ENV_VAR, raising=False)
    assert not gate.plain_pytorch()
    monkeypatch.setenv(gate.SCAN_ENV_VAR, "reference")
    assert gate.plain_pytorch()
    monkeypatch.setenv(gate.SCAN_ENV_VAR, "cpu")
    assert not gate.plain_pytorch()


@pytest.mark.gpu
def test_under_the_reference_switch_no_kernel_of_ours_runs_on_the_gpu(monkeypatch):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from napari_vmunet.model import build_model
    from napari_vmunet.ops import conv, linear, norm
    from napari_vmunet.ops.scan import ss2d, triton_scan

    def refuse(*args, **kwargs):
        raise AssertionError("one of our kernels ran under NAPARI_VMUNET_SCAN=reference")

    model = build_model("isic").cuda().eval()
    x = torch.rand(2, 3, 64, 64, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        ours = model(x).float()
    monkeypatch.setenv(gate.SCAN_ENV_VAR, "reference")
    for module, name in [(norm, "_launch"), (norm, "_launch_backward"), (conv, "_launch"),
                         (ss2d, "_forward"), (triton_scan, "_check")]:
        monkeypatch.setattr(module, name, refuse)
    assert linear._low_precision(x.bfloat16()) is None
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        plain = model(x).float()
    model.train()
    model(x).sum().backward()  # training too
    assert (plain - ours).abs().max() < 0.05
