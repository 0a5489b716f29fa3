"""VM-UNet architecture numbers as data: the config dataclass, the authors' presets, and
recovering a config from a bare state_dict (so nobody has to type architecture numbers).

No torch import here: reading a config must stay cheap.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

PATCH_SIZE = 4  # the patch embedding's stride; fixed in the authors' code
EXPAND = 2  # SS2D inner width = EXPAND * block width; fixed in the authors' code


@dataclass(frozen=True)
class VMUNetConfig:
    """Everything that decides a VM-UNet's shapes.

    ``dims`` are the encoder widths per stage; the decoder mirrors them. ``image_size`` is the
    side the model was trained at (None when unknown); it does not change any weight.
    """

    num_classes: int = 1
    in_chans: int = 3
    dims: tuple[int, ...] = (96, 192, 384, 768)
    depths: tuple[int, ...] = (2, 2, 2, 2)
    depths_decoder: tuple[int, ...] = (2, 2, 2, 1)
    d_state: int = 16
    drop_path_rate: float = 0.2
    image_size: int | None = field(default=None, compare=False)
    # A pixel classifier on the network's features replaces the output layer (model/pixel_head):
    # its hidden width (0: none, the network's own output) and its shape-prior channels.
    head_hidden: int = 0
    head_priors: int = 0

    def __post_init__(self):
        # Accept lists (JSON, the authors' configs) but store tuples so configs are hashable.
        for name in ("dims", "depths", "depths_decoder"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        stages = len(self.dims)
        if not (len(self.depths) == len(self.depths_decoder) == stages) or stages < 1:
            raise ValueError(
                f"dims, depths and depths_decoder need one entry per stage, got {self.dims}, "
                f"{self.depths}, {self.depths_decoder}"
            )
        if self.num_classes < 1 or self.in_chans < 1 or self.d_state < 1:
            raise ValueError("num_classes, in_chans and d_state must be positive")
        growing = all(a <= b for a, b in zip(self.dims, self.dims[1:], strict=False))
        if any(d % 4 for d in self.dims) or not growing:
            raise ValueError(f"dims must be multiples of 4 and non-decreasing, got {self.dims}")
        if min(self.depths) < 1 or min(self.depths_decoder) < 1:
            raise ValueError("every stage needs at least one block")
        if self.head_hidden < 0 or self.head_priors < 0 or (self.head_priors
                                                            and not self.head_hidden):
            raise ValueError("a pixel head needs a positive width, and priors only with it")

    @property
    def dims_decoder(self) -> tuple[int, ...]:
        return tuple(reversed(self.dims))

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this (the patch stride times the merges)."""
        return PATCH_SIZE * 2 ** (len(self.dims) - 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for name in ("dims", "depths", "depths_decoder"):
            d[name] = list(d[name])
        if not self.head_hidden:  # files without a head stay readable by earlier versions
            del d["head_hidden"], d["head_priors"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VMUNetConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown VM-UNet config fields: {', '.join(sorted(unknown))}")
        return cls(**d)


PRESETS: dict[str, VMUNetConfig] = {
    # The two published configurations (configs/config_setting*.py in JCruan519/VM-UNet).
    "isic": VMUNetConfig(num_classes=1, image_size=256),
    "synapse": VMUNetConfig(num_classes=9, image_size=224),
    # Smaller architectures to train from scratch (`napari-vmunet train --config`): the
    # published structure at half the widths, and a quarter of them with one block a stage.
    "small": VMUNetConfig(dims=(48, 96, 192, 384)),
    "tiny": VMUNetConfig(dims=(32, 64, 128, 256), depths=(1, 1, 1, 1),
                         depths_decoder=(1, 1, 1, 1)),
}


def dt_rank(width: int) -> int:
    return math.ceil(width / 16)


_BLOCK = re.compile(r"^(layers|layers_up)\.(\d+)\.blocks\.(\d+)\.ln_1\.weight$")


def infer_config(state_dict: Mapping[str, Any]) -> VMUNetConfig:
    """Recover the config from a VM-UNet state_dict's shapes.

    Keys may carry the ``vmunet.`` prefix or not. Raises ``ValueError`` naming what is missing when
    the tensors are not a VM-UNet.
    """
    sd = {k.removeprefix("vmunet."): v for k, v in state_dict.items()}
    for key in ("patch_embed.proj.weight", "final_conv.weight"):
        if key not in sd:
            raise ValueError(f"not a VM-UNet state_dict: no {key!r}")
    encoder: dict[int, set[int]] = {}
    decoder: dict[int, set[int]] = {}
    widths: dict[int, int] = {}
    for key, value in sd.items():
        m = _BLOCK.match(key)
        if m:
            part, stage, block = m.group(1), int(m.group(2)), int(m.group(3))
            (encoder if part == "layers" else decoder).setdefault(stage, set()).add(block)
            if part == "layers":
                widths[stage] = int(value.shape[0])
    stages = len(encoder)
    if stages == 0 or sorted(encoder) != list(range(stages)):
        raise ValueError("not a VM-UNet state_dict: no encoder blocks 'layers.<i>.blocks.<j>'")
    if sorted(decoder) != list(range(stages)):
        raise ValueError(
            f"not a VM-UNet state_dict: {stages} encoder stages but decoder stages "
            f"{sorted(decoder)} ('layers_up.<i>')"
        )
    for blocks in (*encoder.values(), *decoder.values()):
        if sorted(blocks) != list(range(len(blocks))):
            raise ValueError("not a VM-UNet state_dict: block numbers have gaps")

    dims = tuple(widths[i] for i in range(stages))
    embed = sd["patch_embed.proj.weight"]
    a_logs = sd["layers.0.blocks.0.self_attention.A_logs"]
    config = VMUNetConfig(
        num_classes=int(sd["final_conv.weight"].shape[0]),
        in_chans=int(embed.shape[1]),
        dims=dims,
        depths=tuple(len(encoder[i]) for i in range(stages)),
        depths_decoder=tuple(len(decoder[i]) for i in range(stages)),
        d_state=int(a_logs.shape[1]),
    )
    if int(embed.shape[0]) != dims[0] or tuple(embed.shape[2:]) != (PATCH_SIZE, PATCH_SIZE):
        raise ValueError(
            f"not a VM-UNet state_dict: patch embedding {tuple(embed.shape)} does not match "
            f"{dims[0]} channels and {PATCH_SIZE}x{PATCH_SIZE} patches"
        )
    return config
