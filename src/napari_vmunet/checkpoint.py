"""Reading VM-UNet checkpoints of every kind users have, and writing our own format.

Read: the authors' ``best*.pth`` (a bare state_dict, often with thop's ``total_ops`` /
``total_params`` buffers), their ``latest.pth`` (``model_state_dict`` inside, NumPy loss scalars),
``module.``-prefixed DataParallel files, and our ``.safetensors`` files. VMamba-S ImageNet weights
initialise a new model through :func:`init_from_vmamba`.

A checkpoint is untrusted input: pickles are only ever opened with ``torch.load(...,
weights_only=True)``, which cannot run code; the only extra types let through are NumPy number
scalars (the authors' ``latest.pth`` stores its losses that way). Our own format is safetensors:
the weights plus JSON metadata (config, preprocessing recipe, class names, provenance). Saves are
atomic and never replace an existing file unless asked, nor ever the file a model came from.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .io import atomic_write
from .model import VMUNet, VMUNetConfig, infer_config
from .model.info import ModelInfo

FORMAT_NAME = "napari-vmunet"
FORMAT_VERSION = 1
_THOP_KEYS = ("total_ops", "total_params")
_PREFIX = "vmunet."


class CheckpointError(ValueError):
    """A file that cannot be used as a VM-UNet checkpoint; the message says why and what to do."""


# ----------------------------------------------------------------------------------------------
# reading


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> VMUNet:
    """Load any supported VM-UNet checkpoint; returns the model in eval mode.

    The model carries ``.config`` and ``.info`` (:class:`~.model.info.ModelInfo`: the
    recipe, None when the file has no metadata as the authors' files; class names;
    provenance; the file's path and SHA-256). Metadata that does not hold up (a recipe with a
    wrong field) is refused with a :class:`CheckpointError` that says which.
    """
    path = Path(path)
    state, metadata = read_state_dict(path)
    if metadata.get("config"):
        config = VMUNetConfig.from_dict(metadata["config"])
    else:
        config = _infer_config_or_explain(state, path)
    try:
        info = ModelInfo.parse(config.num_classes, metadata.get("recipe"),
                               metadata.get("class_names"), metadata.get("provenance"),
                               path=path.resolve(), sha256=file_sha256(path))
    except ValueError as exc:
        raise CheckpointError(f"{path.name}: {exc}") from None
    model = VMUNet(config)
    load_weights(model, state, source=path.name)
    model.info = info
    return model.to(map_location).eval()


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The VM-UNet tensors of a file (keys with the ``vmunet.`` prefix) and its metadata
    (empty for the authors' files)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    kind = _sniff(path)
    if kind == "safetensors":
        return _read_safetensors(path)
    if kind is None:
        raise CheckpointError(
            f"{path.name} is not a checkpoint: it is neither a PyTorch file (.pth/.pt) nor "
            "safetensors. Choose the .pth file written by VM-UNet's training script or a "
            ".safetensors file saved by napari-vmunet."
        )
    obj = _torch_load_safely(path)
    return _normalise_state_dict(_unwrap(obj, path), path), {}


def _sniff(path: Path) -> str | None:
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04"):
        return "torch-zip"
    if head[:1] == b"\x80":  # pickle protocol 2+: torch's legacy format
        return "torch-legacy"
    if len(head) >= 9 and head[8:9] == b"{":  # u64 header length, then JSON
        return "safetensors"
    return None


# NumPy scalars and their dtypes: the only non-tensor objects the authors' files contain. They
# construct numbers from bytes and can't run code. numpy 1.x files name the scalar
# numpy.core.multiarray.scalar, numpy 2.x numpy._core.multiarray.scalar.
def _numpy_scalar_globals() -> list:
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    allowed = [np.dtype, scalar, (scalar, "numpy.core.multiarray.scalar"),
               (scalar, "numpy._core.multiarray.scalar")]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25 pickles dtypes by class
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")
                    and n not in ("ObjectDType", "StringDType", "VoidDType")]
    return allowed


def _torch_load_safely(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as first:
        needed = _unsafe_globals(path)
        if needed is None:
            raise _unreadable(path, first) from first
        allowed = _numpy_scalar_globals()
        allowed_names = {a[1] if isinstance(a, tuple) else f"{a.__module__}.{a.__qualname__}"
                         for a in allowed}
        refused = [g for g in needed if g not in allowed_names]
        if refused:
            raise CheckpointError(
                f"{path.name} was refused: loading it would run code from the file (it needs "
                f"{', '.join(refused[:5])}). Checkpoints are untrusted input and napari-vmunet "
                "only reads tensors. If you made this file, re-save just the weights: "
                "torch.save(model.state_dict(), 'weights.pth')."
            ) from None
        try:
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as second:
            raise _unreadable(path, second) from second


def _unsafe_globals(path: Path) -> list[str] | None:
    """The Python objects a pickle would build beyond plain tensors; None if unreadable."""
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        return None


def _unreadable(path: Path, exc: Exception) -> CheckpointError:
    text = str(exc)
    if isinstance(exc, (zipfile.BadZipFile, EOFError)) or any(
        s in text for s in ("failed finding central directory", "failed reading zip archive",
                            "Ran out of input", "truncated", "unexpected EOF", "file_size")
    ):
        return CheckpointError(
            f"{path.name} is truncated or damaged ({path.stat().st_size:,} bytes); copy or "
            "download it again."
        )
    return CheckpointError(f"{path.name} could not be read as a PyTorch checkpoint: {text[:300]}")


def _unwrap(obj: Any, path: Path) -> Mapping[str, Any]:
    """The state_dict inside the containers the authors and others use."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path.name} holds a {type(obj).__name__}, not a state_dict (a dict of tensors)."
        )
    for key in ("model_state_dict", "state_dict"):
        if isinstance(obj.get(key), Mapping):
            return obj[key]
    if isinstance(obj.get("model"), Mapping) and not any(
        isinstance(v, torch.Tensor) for v in obj.values()
    ):
        raise CheckpointError(
            f"{path.name} looks like VMamba ImageNet weights (a 'model' entry, no VM-UNet "
            "decoder); they initialise a new model's encoder and decoder: use "
            "init_from_vmamba(model, path)."
        )
    return obj


def _normalise_state_dict(state: Mapping[str, Any], path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = str(key)
        if key.rsplit(".", 1)[-1] in _THOP_KEYS:  # thop's profiling buffers, not weights
            continue
        key = key.removeprefix("module.")  # DataParallel / DistributedDataParallel
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path.name}: entry {key!r} is a {type(value).__name__}, "
                                  "not a tensor; this is not a model state_dict.")
        out[key] = value
    if not out:
        raise CheckpointError(f"{path.name} contains no tensors.")
    if not any(k.startswith(_PREFIX) for k in out) and "patch_embed.proj.weight" in out:
        # VSSM's own state_dict (model.vmunet.state_dict()): same tensors, no wrapper prefix.
        out = {_PREFIX + k: v for k, v in out.items()}
    return out


def _infer_config_or_explain(state: Mapping[str, torch.Tensor], path: Path) -> VMUNetConfig:
    keys = [k.removeprefix(_PREFIX) for k in state]
    if not any(k.startswith("layers_up.") for k in keys) and any(
        re.match(r"layers\.\d+\.blocks\.\d+\.", k) for k in keys
    ):
        hint = ("this looks like VMamba ImageNet weights (an encoder without VM-UNet's decoder); "
                "use init_from_vmamba(model, path) to start a new model from them")
        raise CheckpointError(f"{path.name} is not a trained VM-UNet: {hint}.")
    try:
        return infer_config(state)
    except ValueError as exc:
        reason = str(exc).removeprefix("not a VM-UNet state_dict: ")
        raise CheckpointError(f"{path.name} is not a VM-UNet checkpoint: {reason}.") from None


def load_weights(model: VMUNet, state: Mapping[str, torch.Tensor], source: str = "checkpoint"):
    """Strictly load ``state`` into ``model``; one clear error listing what does not fit."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the model"
                  for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} keys, e.g. {missing[0]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[0]}")
    if mismatched:
        problems.append(f"{len(mismatched)} shapes differ, e.g. {mismatched[0]}")
    if problems:
        if missing and not any(k.startswith(_PREFIX + "layers_up") for k in state):
            problems.append("this looks like VMamba ImageNet weights; use init_from_vmamba")
        raise CheckpointError(f"{source} does not fit this VM-UNet: " + "; ".join(problems))
    model.load_state_dict({k: state[k] for k in expected}, strict=True)


# ----------------------------------------------------------------------------------------------
# our format


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            raw = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as exc:
        raise CheckpointError(f"{path.name} is truncated or damaged ({exc}).") from None
    metadata: dict[str, Any] = {}
    if raw.get("format") == FORMAT_NAME:
        version = int(raw.get("format_version", "0"))
        if version > FORMAT_VERSION:
            raise CheckpointError(
                f"{path.name} was written by a newer napari-vmunet (format {version}); update "
                "the plugin to read it."
            )
        for field in ("config", "recipe", "class_names", "provenance"):
            if field in raw:
                metadata[field] = json.loads(raw[field])
    state = _normalise_state_dict(tensors, path)
    return state, metadata


def save_checkpoint(
    model: VMUNet,
    path: str | os.PathLike,
    *,
    recipe: Mapping[str, Any] | None = None,
    class_names: list[str] | None = None,
    provenance: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``model`` in our safetensors format, atomically.

    ``recipe`` (a :class:`~.recipes.Recipe` or its dict) and ``class_names`` default to the
    model's own (``model.info``) and are checked before anything is written: a recipe that
    does not hold up is a ``ValueError`` naming it. ``provenance`` (data, slices, steps,
    metrics...) is completed with what is known automatically: the checkpoint the model was
    loaded from (name and SHA-256), the time and the software versions. Where it may be
    written is :func:`check_save_path`'s rule. ``dtype`` (e.g. torch.float16) shrinks the file.
    """
    from safetensors.torch import save_file

    path = Path(path)
    own = model.info
    parent = own.path
    check_save_path(path, overwrite=overwrite, parent=parent)
    info = ModelInfo.parse(model.config.num_classes,
                           recipe if recipe is not None else own.recipe,
                           class_names if class_names is not None else own.class_names)

    tensors = {}
    for key, value in model.state_dict().items():
        value = value.detach().to("cpu")
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        tensors[key] = value.contiguous().clone()  # safetensors refuses shared storage
    made_by = {
        "parent_sha256": own.sha256,
        "parent_name": parent.name if parent else None,
        **(provenance or {}),
        "saved_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": _versions(),
    }
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "config": json.dumps(model.config.to_dict()),
        "recipe": json.dumps(info.recipe.to_dict() if info.recipe else None),
        "class_names": json.dumps(list(info.class_names) if info.class_names else None),
        "provenance": json.dumps(made_by, default=str),
    }

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp), metadata=metadata)
        if not overwrite and path.exists():  # appeared while we were writing
            raise FileExistsError(f"{path} already exists; choose another name.")

    return atomic_write(path, write)


def check_save_path(path: str | os.PathLike, *, overwrite: bool = False,
                    parent: str | os.PathLike | None = None) -> None:
    """Whether a checkpoint may be written to ``path``, the one rule of save_checkpoint, the
    command line and the Fine-tune widget's Save as…: a ``.safetensors`` name, not an existing
    file unless ``overwrite``, and never ``parent``, the file the model came from. Raises
    ``ValueError`` or ``FileExistsError`` saying what to do."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"napari-vmunet saves .safetensors files, not "
                         f"{path.suffix or 'files without suffix'} ({path.name})")
    if parent is not None and path.exists() and path.resolve() == Path(parent).resolve():
        raise FileExistsError(f"{path} is the checkpoint this model comes from; save under a "
                              "new name (the original is kept)")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; choose another name, or allow "
                              "overwriting (--overwrite, overwrite=True)")


def _versions() -> dict[str, str]:
    from . import __version__

    return {"napari_vmunet": __version__, "torch": torch.__version__}


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------
# VMamba ImageNet initialisation


def init_from_vmamba(model: VMUNet, path: str | os.PathLike) -> dict[str, int]:
    """Initialise ``model`` from VMamba-S v0 ImageNet weights exactly as ``VMUNet.load_from``
    does: tensors whose names exist in the encoder are copied (117 for VMamba-S into the
    published config), then encoder stage ``i`` is copied into decoder stage ``S-1-i`` (91).
    The up-sampling layers and the head keep their random initialisation.

    Returns the counts {"encoder": n, "decoder": m, "model_tensors": k}.
    """
    path = Path(path)
    obj = _torch_load_safely(path)
    weights = obj.get("model", obj) if isinstance(obj, Mapping) else obj
    if not isinstance(weights, Mapping):
        raise CheckpointError(f"{path.name} does not hold VMamba weights (a dict of tensors).")
    weights = {k.removeprefix("module."): v for k, v in weights.items()
               if isinstance(v, torch.Tensor)}
    if any(re.search(r"\.blocks\.\d+\.op\.", k) for k in weights):
        raise CheckpointError(
            f"{path.name} is a VMamba v2 checkpoint ('op'/'norm' blocks) and does not fit "
            "VM-UNet; use the VMamba-S v0 weights vmamba_small_e238_ema.pth."
        )
    target = model.vmunet.state_dict()
    stages = len(model.config.dims)

    def fitting(candidates):
        return {k: v for k, v in candidates.items() if k in target and v.shape == target[k].shape}

    encoder = fitting(weights)
    mirrored = {}
    for key, value in weights.items():
        m = re.match(r"layers\.(\d+)\.(.*)", key)
        if m and int(m.group(1)) < stages:
            mirrored[f"layers_up.{stages - 1 - int(m.group(1))}.{m.group(2)}"] = value
    decoder = fitting(mirrored)
    if not encoder:
        raise CheckpointError(
            f"no tensor of {path.name} fits this model (dims {list(model.config.dims)}); "
            "VMamba-S weights fit the published configuration (dims 96-768, d_state 16)."
        )
    with torch.no_grad():
        for key, value in {**encoder, **decoder}.items():
            target[key].copy_(value)
    return {"encoder": len(encoder), "decoder": len(decoder), "model_tensors": len(target)}
