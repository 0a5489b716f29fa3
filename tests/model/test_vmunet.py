"""The model layer: the authors' state_dict layout, config inference, forward semantics."""

import pytest
import torch

from napari_vmunet.model import PRESETS, VMUNet, VMUNetConfig, build_model, infer_config

from ..conftest import DATA

SPEC_KEYS = DATA / "vmunet_isic_state_dict.txt"


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


def test_a_grown_head_keeps_what_it_knows_and_names_the_new_classes():
    from napari_vmunet.model.info import ModelInfo

    model = VMUNet(VMUNetConfig(num_classes=1, dims=(16, 32, 64, 128), depths=(1, 1, 1, 1),
                                depths_decoder=(1, 1, 1, 1), d_state=8)).eval()
    model.info = ModelInfo(class_names=("brain",))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        model.extend_head(3)
        after = torch.softmax(model(x), 1)
    assert model.config.num_classes == 3 and model.vmunet.final_conv.out_channels == 3
    assert torch.allclose(after[:, 1], before[:, 0], atol=1e-3)  # the foreground is kept
    assert after[:, 2].max() < 0.05  # the new class starts improbable
    assert model.info.class_names == ("background", "brain", "class 2")
