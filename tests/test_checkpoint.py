"""Reading every checkpoint layout users have, refusing what is unsafe or broken, writing ours."""

import json
import os
import re
from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_vmunet.checkpoint import (
    CheckpointError,
    init_from_vmamba,
    load_checkpoint,
    read_state_dict,
    save_checkpoint,
)
from napari_vmunet.model import PRESETS, VMUNet, VMUNetConfig
from napari_vmunet.recipes import RECIPES


def _same_output(a, b, size=32):
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        return torch.allclose(a(x), b(x), rtol=1e-5, atol=1e-6)


def test_authors_best_pth_with_thop_buffers(tmp_path, tiny_model):
    """train.py profiles the model with thop before saving: its buffers end up in best.pth."""
    from thop import profile

    profile(tiny_model, inputs=(torch.randn(1, 3, 32, 32),), verbose=False)
    state = tiny_model.state_dict()
    assert any(k.endswith("total_ops") for k in state)  # the file really carries them
    torch.save(state, tmp_path / "best-epoch12-loss0.1.pth")

    loaded = load_checkpoint(tmp_path / "best-epoch12-loss0.1.pth")
    assert not loaded.training
    assert loaded.config == tiny_model.config
    assert loaded.info.recipe is None
    assert _same_output(loaded, tiny_model)


def test_authors_latest_pth_from_dataparallel_with_numpy_scalars(tmp_path, tiny_config):
    """train_synapse.py's latest.pth: model_state_dict, optimizer, scheduler, NumPy losses; a
    DataParallel wrapper's state_dict has the module. prefix."""
    model = VMUNet(VMUNetConfig(**{**tiny_config.to_dict(), "num_classes": 9})).eval()
    parallel = torch.nn.DataParallel(model)
    optimizer = torch.optim.AdamW(parallel.parameters(), lr=1e-3, weight_decay=1e-2)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=100, eta_min=1e-5)
    torch.save({
        "epoch": 3, "min_loss": np.float64(0.4), "min_epoch": 2, "loss": np.mean([0.4, 0.5]),
        "model_state_dict": parallel.state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
        "scheduler_state_dict": scheduler.state_dict(),
    }, tmp_path / "latest.pth")

    loaded = load_checkpoint(tmp_path / "latest.pth")
    assert loaded.config.num_classes == 9
    assert _same_output(loaded, model)


def test_legacy_torch_format(tmp_path, tiny_model):
    torch.save(tiny_model.state_dict(), tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    assert _same_output(load_checkpoint(tmp_path / "old.pth"), tiny_model)


def test_bare_vssm_state_dict_without_the_wrapper_prefix(tmp_path, tiny_model):
    torch.save(tiny_model.vmunet.state_dict(), tmp_path / "vssm.pth")
    assert _same_output(load_checkpoint(tmp_path / "vssm.pth"), tiny_model)


def test_safetensors_round_trip_keeps_metadata(tmp_path, tiny_model):
    recipe = replace(RECIPES["mri"], percentiles=(1.0, 99.0))
    path = save_checkpoint(tiny_model, tmp_path / "brain.safetensors", recipe=recipe.to_dict(),
                           class_names=["brain"], provenance={"slices": [3, 4, 5], "steps": 10})
    loaded = load_checkpoint(path)
    assert loaded.config == tiny_model.config
    assert loaded.info.recipe == recipe
    assert loaded.info.class_names == ("brain",)
    assert loaded.info.provenance["slices"] == [3, 4, 5]
    assert loaded.info.provenance["versions"]["torch"] == torch.__version__
    assert _same_output(loaded, tiny_model)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    # A model saved from a loaded one records its parent.
    child = save_checkpoint(loaded, tmp_path / "child.safetensors")
    assert load_checkpoint(child).info.provenance["parent_sha256"] == loaded.info.sha256


def test_a_recipe_that_does_not_hold_up_is_refused_at_save_and_nothing_is_written(
        tmp_path, tiny_model):
    target = tmp_path / "lesion.safetensors"
    with pytest.raises(ValueError, match="recipe 'isic' is not a valid recipe: it has no "
                       "description and no intensity"):
        save_checkpoint(tiny_model, target, recipe={"name": "isic"})
    with pytest.raises(ValueError, match="recipe 'ct' .* window cannot be 'wide'"):
        save_checkpoint(tiny_model, target, recipe={**RECIPES["ct"].to_dict(), "window": "wide"})
    with pytest.raises(ValueError, match="2 class names"):
        save_checkpoint(tiny_model, target, class_names=["background", "lesion"])
    assert not list(tmp_path.iterdir())


def test_a_file_whose_recipe_does_not_hold_up_is_refused_on_load(tmp_path, tiny_model):
    """A file written by hand (or by another tool) with a broken recipe: one error naming the
    file and the recipe, not a TypeError when it is used."""
    from safetensors.torch import save_file

    path = save_checkpoint(tiny_model, tmp_path / "good.safetensors", recipe=RECIPES["isic"])
    state, _ = read_state_dict(path)
    raw = {"format": "napari-vmunet", "format_version": "1",
           "config": json.dumps(tiny_model.config.to_dict()),
           "recipe": json.dumps({"name": "isic", "threshold": 1.5})}
    save_file(state, str(tmp_path / "bad.safetensors"), metadata=raw)
    with pytest.raises(CheckpointError, match="bad.safetensors: recipe 'isic' is not a valid"):
        load_checkpoint(tmp_path / "bad.safetensors")


def test_half_precision_save(tmp_path, tiny_model):
    path = save_checkpoint(tiny_model, tmp_path / "small.safetensors", dtype=torch.float16)
    state, _ = read_state_dict(path)
    assert all(v.dtype == torch.float16 for v in state.values())
    loaded = load_checkpoint(path)  # weights come back as the model's float32
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), tiny_model(x), atol=5e-3)


def test_save_never_replaces_existing_files_or_the_parent(tmp_path, tiny_model):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="already exists"):
        save_checkpoint(tiny_model, target)
    assert target.read_bytes() == b"precious"

    parent = save_checkpoint(tiny_model, tmp_path / "parent.safetensors")
    before = parent.read_bytes()
    loaded = load_checkpoint(parent)
    with pytest.raises(FileExistsError, match="the checkpoint this model comes from"):
        save_checkpoint(loaded, parent, overwrite=True)
    assert parent.read_bytes() == before

    save_checkpoint(tiny_model, target, overwrite=True)  # asked for explicitly
    assert load_checkpoint(target).config == tiny_model.config
    with pytest.raises(ValueError, match=".safetensors"):
        save_checkpoint(tiny_model, tmp_path / "model.pth")


def test_a_failed_save_leaves_no_partial_file(tmp_path, tiny_model, monkeypatch):
    import safetensors.torch

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tiny_model, tmp_path / "out.safetensors")
    assert list(tmp_path.iterdir()) == []


class _CreatesAFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_a_pickle_that_runs_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"vmunet.patch_embed.proj.weight": torch.zeros(1), "x": _CreatesAFile(str(marker))},
               tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"refused: loading it would run code.*mkdir"):
        load_checkpoint(tmp_path / "evil.pth")
    assert not marker.exists()


def test_truncated_files(tmp_path, tiny_model):
    torch.save(tiny_model.state_dict(), tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or damaged"):
        load_checkpoint(tmp_path / "cut.pth")

    ours = save_checkpoint(tiny_model, tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(ours[: len(ours) // 2])
    with pytest.raises(CheckpointError, match="truncated or damaged"):
        load_checkpoint(tmp_path / "cut.safetensors")


def test_files_that_are_not_checkpoints(tmp_path):
    (tmp_path / "notes.pth").write_text("hello")
    with pytest.raises(CheckpointError, match="is not a checkpoint"):
        load_checkpoint(tmp_path / "notes.pth")
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "missing.pth")
    torch.save([torch.zeros(3)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="holds a list, not a state_dict"):
        load_checkpoint(tmp_path / "list.pth")
    torch.save(torch.nn.Linear(3, 3).state_dict(), tmp_path / "linear.pth")
    with pytest.raises(CheckpointError, match="linear.pth is not a VM-UNet checkpoint: no "
                                              "'patch_embed.proj.weight'"):
        load_checkpoint(tmp_path / "linear.pth")


def test_shape_mismatch_names_the_tensor(tmp_path, tiny_model):
    path = save_checkpoint(tiny_model, tmp_path / "m.safetensors")
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(path, "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tensors["vmunet.final_conv.weight"] = torch.zeros(9, 2, 1, 1)
    save_file(tensors, tmp_path / "bad.safetensors", metadata=meta)
    with pytest.raises(CheckpointError, match=re.escape(
            "1 shapes differ, e.g. vmunet.final_conv.weight (9, 2, 1, 1) in the file, "
            "(1, 2, 1, 1) in the model")):
        load_checkpoint(tmp_path / "bad.safetensors")


def _vmamba_small_v0(tmp_path):
    """A file laid out like vmamba_small_e238_ema.pth: VMamba-S v0 (depths 2-2-27-2, no decoder,
    ImageNet norm + head) under 'model'. Built from our own blocks, which share v0's names."""
    torch.manual_seed(1)
    vmamba = VMUNet(VMUNetConfig(depths=(2, 2, 27, 2))).vmunet
    weights = {k: v for k, v in vmamba.state_dict().items()
               if not k.startswith(("layers_up", "final_"))}
    weights["norm.weight"], weights["norm.bias"] = torch.ones(768), torch.zeros(768)
    weights["head.weight"], weights["head.bias"] = torch.randn(1000, 768), torch.zeros(1000)
    torch.save({"model": weights}, tmp_path / "vmamba_small_e238_ema.pth")
    return tmp_path / "vmamba_small_e238_ema.pth", weights


def test_init_from_vmamba_copies_what_the_authors_copy(tmp_path):
    path, weights = _vmamba_small_v0(tmp_path)
    assert len(weights) == 446
    model = VMUNet(PRESETS["isic"])
    head_before = model.vmunet.final_conv.weight.clone()
    counts = init_from_vmamba(model, path)
    assert counts == {"encoder": 117, "decoder": 91, "model_tensors": 222}
    state = model.vmunet.state_dict()
    assert torch.equal(state["layers.2.blocks.1.self_attention.A_logs"],
                       weights["layers.2.blocks.1.self_attention.A_logs"])
    assert torch.equal(state["layers_up.0.blocks.1.self_attention.in_proj.weight"],
                       weights["layers.3.blocks.1.self_attention.in_proj.weight"])
    assert torch.equal(state["layers_up.3.blocks.0.ln_1.weight"],
                       weights["layers.0.blocks.0.ln_1.weight"])
    assert torch.equal(model.vmunet.final_conv.weight, head_before)  # random parts stay

    with pytest.raises(CheckpointError, match="VMamba ImageNet weights.*init_from_vmamba"):
        load_checkpoint(path)
    torch.save(weights, tmp_path / "bare_encoder.pth")
    with pytest.raises(CheckpointError, match="init_from_vmamba"):
        load_checkpoint(tmp_path / "bare_encoder.pth")


def test_init_from_vmamba_rejects_v2_and_unfitting_weights(tmp_path, tiny_config):
    v2 = {"layers.0.blocks.0.op.A_logs": torch.zeros(4, 4), "patch_embed.0.weight": torch.zeros(1)}
    torch.save({"model": v2}, tmp_path / "vssm_small_v2.pth")
    with pytest.raises(CheckpointError, match="v2"):
        init_from_vmamba(VMUNet(PRESETS["isic"]), tmp_path / "vssm_small_v2.pth")
    path, _ = _vmamba_small_v0(tmp_path)
    with pytest.raises(CheckpointError, match="no tensor .* fits"):
        init_from_vmamba(VMUNet(tiny_config), path)


def test_metadata_from_a_newer_format_is_refused(tmp_path, tiny_model):
    path = save_checkpoint(tiny_model, tmp_path / "m.safetensors")
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(path, "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, tmp_path / "future.safetensors", metadata={**meta, "format_version": "99"})
    with pytest.raises(CheckpointError, match="newer napari-vmunet"):
        load_checkpoint(tmp_path / "future.safetensors")
    assert json.loads(meta["config"])["dims"] == list(tiny_model.config.dims)
