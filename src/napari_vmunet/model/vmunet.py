"""VM-UNet (Ruan, Li & Xiang 2024) re-implemented with the authors' parameter names.

Module and parameter names, registration order and initialisation follow JCruan519/VM-UNet
(``models/vmunet/{vmunet,vmamba}.py``), so ``state_dict()`` has exactly the authors' keys,
order and shapes and their checkpoints load strictly. What differs is how it runs: the
operators are :mod:`napari_vmunet.ops`' (the selective scan on the CPU, CUDA or mamba-ssm), and
inputs whose sides the network cannot handle get a clear error instead of a shape mismatch
deep inside.

Tensors between modules are channels-last (B, H, W, C), as in the original.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..ops.conv import conv_silu
from ..ops.linear import linear_float32, linear_residual
from ..ops.norm import layer_norm, layer_norm_linear
from ..ops.scan import resolve_backend, selective_scan_2d
from ..ops.scan.composed import N_DIRECTIONS
from .config import EXPAND, PATCH_SIZE, VMUNetConfig, dt_rank
from .info import ModelInfo
from .pixel_head import PixelHead


class DropPath(nn.Module):
    """Stochastic depth per sample (identity at eval), as timm's DropPath."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class PatchEmbed2D(nn.Module):
    def __init__(self, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=PATCH_SIZE, stride=PATCH_SIZE)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x):
        return layer_norm(self.proj(x).permute(0, 2, 3, 1), self.norm)


class PatchMerging2D(nn.Module):
    """2x2 neighbourhoods -> channels (phase order of the original), LayerNorm, Linear 4C -> 2C."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x):
        x = torch.cat(
            [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1
        )
        return self.reduction(layer_norm(x, self.norm, feeds_matmul=True))


def _pixels_from_channels(x: torch.Tensor, scale: int) -> torch.Tensor:
    """einops ``b h w (p1 p2 c) -> b (h p1) (w p2) c``: the original's channel order, which is
    not pixel_shuffle's (c, p1, p2)."""
    b, h, w, c = x.shape
    c //= scale * scale
    x = x.view(b, h, w, scale, scale, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * scale, w * scale, c)


class PatchExpand2D(nn.Module):
    """Decoder upsampling: Linear 2d -> 4d, then 2x2 pixels of d channels each."""

    def __init__(self, dim: int):
        super().__init__()
        self.expand = nn.Linear(2 * dim, 4 * dim, bias=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        return layer_norm(_pixels_from_channels(self.expand(x), 2), self.norm)


class FinalPatchExpand2D(nn.Module):
    """Back to full resolution: Linear d -> 4d, then 4x4 pixels of d/4 channels each.

    ``forward`` leaves each input pixel's 16 output pixels where the linear layer wrote them,
    (B, h, w, 16, d/4), normalized: the 1x1 output convolution can run on them there, and only
    its few channels are moved into place (VSSM.forward_final). Moving the d/4-channel
    full-resolution map instead cost two copies of the largest tensor in the network. Given
    that convolution as ``head`` (a linear layer's weight and bias), ``forward`` applies it too,
    in the norm's kernel on the GPU, and returns (B, h, w, 16, classes).
    """

    def __init__(self, dim: int, scale: int = PATCH_SIZE):
        super().__init__()
        self.scale = scale
        self.expand = nn.Linear(dim, scale * dim, bias=False)
        self.norm = nn.LayerNorm(dim // scale)

    def forward(self, x, head: tuple[torch.Tensor, torch.Tensor | None] | None = None):
        x = self.expand(x).unflatten(-1, (self.scale * self.scale, -1))
        if head is None:
            return layer_norm(x, self.norm, feeds_matmul=True)  # into the 1x1 convolution
        return layer_norm_linear(x, self.norm, *head)


class SS2D(nn.Module):
    """2D selective scan: the image is read in four directions, each direction is a selective
    state-space scan, and the four results are summed back in row-major order."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 3):
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_inner = EXPAND * d_model
        self.dt_rank = dt_rank(d_model)
        self.scan_backend: str | None = None  # None: automatic, see napari_vmunet.ops.scan
        d_inner, k = self.d_inner, N_DIRECTIONS

        # Parameters before submodules: this is the authors' state_dict order.
        self.x_proj_weight = nn.Parameter(torch.empty(k, self.dt_rank + 2 * d_state, d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d_inner, self.dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, d_inner))
        self.A_logs = nn.Parameter(torch.empty(k * d_inner, d_state))
        self.Ds = nn.Parameter(torch.empty(k * d_inner))

        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv2d = nn.Conv2d(
            d_inner, d_inner, kernel_size=d_conv, padding=(d_conv - 1) // 2, groups=d_inner
        )
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min=1e-3, dt_max=0.1, dt_floor=1e-4):
        """The original's initialisation of the raw SSM parameters (S4D-real A, D = 1, dt bias
        such that softplus(bias) is log-uniform in [dt_min, dt_max])."""
        bound = 1.0 / math.sqrt(self.d_inner)  # nn.Linear's default for x_proj
        self.x_proj_weight.uniform_(-bound, bound)
        self.dt_projs_weight.uniform_(-self.dt_rank**-0.5, self.dt_rank**-0.5)
        dt = torch.exp(
            torch.rand_like(self.dt_projs_bias) * (math.log(dt_max) - math.log(dt_min))
            + math.log(dt_min)
        ).clamp(min=dt_floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_logs.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)))
        self.Ds.fill_(1.0)

    def forward(self, x, residual=None, overwrite_residual=False):
        """SS2D(x); with ``residual``, residual + SS2D(x), written over the residual where
        ``overwrite_residual`` allows (see :func:`napari_vmunet.ops.linear.linear_residual`)."""
        x, z = self.in_proj(x).chunk(2, dim=-1)
        # (B, H, W, d_inner): for the scan, and (on the fused GPU path, under autocast) in the
        # autocast dtype for x_proj
        x, x_for_proj = conv_silu(x, self.conv2d)
        k, d = N_DIRECTIONS, self.d_inner
        # x_proj for every pixel once; each direction then reads its pixels in its own order
        # (float32 for the scan on the GPU, straight from the product: see ops.linear)
        proj = linear_float32(x_for_proj, self.x_proj_weight.reshape(-1, d)).unflatten(-1, (k, -1))
        y = selective_scan_2d(
            x, proj, self.dt_projs_weight, self.dt_projs_bias.view(k, d),
            -torch.exp(self.A_logs.float()).view(k, d, -1), self.Ds.view(k, d),
            backend=self.scan_backend,
        )  # (B, H, W, d_inner) float32
        # out_norm(y) * silu(z), then out_proj
        gated = layer_norm(y, self.out_norm, gate=z, feeds_matmul=True)
        if residual is None:
            return self.out_proj(gated)
        return linear_residual(gated, self.out_proj.weight, residual, overwrite_residual)


class VSSBlock(nn.Module):
    """Pre-norm residual SS2D block (no MLP)."""

    def __init__(self, hidden_dim: int, drop_path: float, d_state: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden_dim)
        self.self_attention = SS2D(hidden_dim, d_state=d_state)
        self.drop_path = DropPath(drop_path)

    def forward(self, x, overwrite_input: bool = False):
        """x + SS2D(ln_1(x)); ``overwrite_input``: x is the caller's to lose (no other
        reference), so GPU inference may write the sum over it."""
        attention_input = layer_norm(x, self.ln_1, feeds_matmul=True)  # into in_proj
        if self.training and self.drop_path.drop_prob:
            return x + self.drop_path(self.self_attention(attention_input))
        return self.self_attention(attention_input, residual=x, overwrite_residual=overwrite_input)


def _run_blocks(blocks: nn.ModuleList, x: torch.Tensor, use_checkpoint: bool,
                owns_input: bool) -> torch.Tensor:
    """The blocks in turn; ``owns_input``: no one else holds x (in the encoder a stage's input
    is also its skip connection), so the first block may overwrite it, as the others may
    overwrite what the block before them returned."""
    for i, block in enumerate(blocks):
        if use_checkpoint and x.requires_grad:
            x = checkpoint(block, x, use_reentrant=False)
        else:
            x = block(x, overwrite_input=owns_input or i > 0)
    return x


class VSSLayer(nn.Module):
    """Encoder stage: blocks, then (except the last stage) patch merging."""

    def __init__(self, dim, depth, drop_path, d_state, downsample: bool):
        super().__init__()
        self.use_checkpoint = False
        self.blocks = nn.ModuleList(VSSBlock(dim, drop_path[i], d_state) for i in range(depth))
        self.downsample = PatchMerging2D(dim) if downsample else None

    def forward(self, x):
        x = _run_blocks(self.blocks, x, self.use_checkpoint, owns_input=False)  # (a skip)
        return self.downsample(x) if self.downsample is not None else x


class VSSLayerUp(nn.Module):
    """Decoder stage: (except the first stage) patch expanding, then blocks."""

    def __init__(self, dim, depth, drop_path, d_state, upsample: bool):
        super().__init__()
        self.use_checkpoint = False
        self.blocks = nn.ModuleList(VSSBlock(dim, drop_path[i], d_state) for i in range(depth))
        self.upsample = PatchExpand2D(dim) if upsample else None

    def forward(self, x, owns_input: bool = False):
        """``owns_input``: no one else holds x, so GPU inference may overwrite it (an
        upsampled x is this stage's own either way)."""
        if self.upsample is not None:
            x = self.upsample(x)
            owns_input = True
        return _run_blocks(self.blocks, x, self.use_checkpoint, owns_input)


class VSSM(nn.Module):
    """The network body: patch embedding, encoder, decoder with additive skips, final expansion."""

    def __init__(self, config: VMUNetConfig):
        super().__init__()
        dims, dims_up = config.dims, config.dims_decoder
        stages = len(dims)
        self.patch_embed = PatchEmbed2D(config.in_chans, dims[0])
        dpr = torch.linspace(0, config.drop_path_rate, sum(config.depths)).tolist()
        dpr_up = torch.linspace(0, config.drop_path_rate, sum(config.depths_decoder)).tolist()[::-1]

        def rates(values, depths, i):
            return values[sum(depths[:i]) : sum(depths[: i + 1])]

        self.layers = nn.ModuleList(
            VSSLayer(dims[i], config.depths[i], rates(dpr, config.depths, i), config.d_state,
                     downsample=i < stages - 1)
            for i in range(stages)
        )
        self.layers_up = nn.ModuleList(
            VSSLayerUp(dims_up[i], config.depths_decoder[i],
                       rates(dpr_up, config.depths_decoder, i), config.d_state, upsample=i != 0)
            for i in range(stages)
        )
        self.final_up = FinalPatchExpand2D(dims_up[-1])
        self.final_conv = nn.Conv2d(dims_up[-1] // PATCH_SIZE, config.num_classes, 1)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward_features(self, x):
        """Encoder; returns the bottleneck and the tensors entering each encoder stage."""
        x = self.patch_embed(x)
        skips = []
        for layer in self.layers:
            skips.append(x)
            x = layer(x)
        return x, skips

    def forward_features_up(self, x, skips):
        """Decoder; skip connections are added (not concatenated) before upsampling."""
        for i, layer_up in enumerate(self.layers_up):
            x = layer_up(x if i == 0 else x + skips[-i], owns_input=True)  # (ours alone)
        return x

    def forward_final(self, x):
        """Logits (B, classes, H, W): the final expansion with the 1x1 convolution on each
        output pixel where the expansion left it (a linear layer), then the pixels put in
        place."""
        conv = self.final_conv
        logits = self.final_up(x, (conv.weight.flatten(1), conv.bias)).flatten(3)
        return _pixels_from_channels(logits, self.final_up.scale).permute(0, 3, 1, 2).contiguous()

    def forward(self, x):
        x, skips = self.forward_features(x)
        return self.forward_final(self.forward_features_up(x, skips))


class VMUNet(nn.Module):
    """VM-UNet with the authors' state_dict layout (every key starts with ``vmunet.``).

    ``forward`` has the authors' semantics: a 1-channel input is tiled to the model's channels,
    and the output is a sigmoid probability when there is one class, logits otherwise.
    ``forward_logits`` always returns logits (for training losses and softmax/argmax).
    """

    def __init__(self, config: VMUNetConfig | None = None):
        super().__init__()
        self.config = config or VMUNetConfig()
        self.info = ModelInfo()  # what its checkpoint said (recipe, classes, ...), when loaded
        self.vmunet = VSSM(self.config)
        self.pixel_head: PixelHead | None = None
        if self.config.head_hidden:
            self.attach_pixel_head(self.config.head_hidden, self.config.head_priors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.forward_logits(x)
        return torch.sigmoid(logits) if self.config.num_classes == 1 else logits

    def forward_logits(self, x: torch.Tensor, prior: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, classes, H, W). ``prior``: the corrected slices' shape carried to these
        slices (B, priors, H, W), for a model with a pixel head that takes one."""
        self.check_input(x)
        if self.pixel_head is None:
            return self.vmunet(self._model_channels(x))
        return self.pixel_head(x, *self.head_inputs(x), prior)

    def _model_channels(self, x: torch.Tensor) -> torch.Tensor:
        """A 1-channel batch tiled to the model's channels, as the authors' code does."""
        if x.shape[1] == 1 and self.config.in_chans != 1:
            return x.expand(-1, self.config.in_chans, -1, -1)
        return x

    def head_inputs(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """What a pixel head reads of image batch ``x``: the encoder's first two stage inputs
        and the decoder's output, channels last."""
        v = self.vmunet
        bottom, skips = v.forward_features(self._model_channels(x))
        return skips[:2], v.forward_features_up(bottom, skips)

    def attach_pixel_head(self, hidden: int = 32, priors: int = 1) -> PixelHead:
        """A new, untrained pixel head in place of the network's output layer (any earlier
        head is replaced); detach with :meth:`detach_pixel_head`."""
        device = self.vmunet.final_conv.weight.device
        self.pixel_head = PixelHead(self.config.dims, self.config.num_classes, hidden,
                                    priors).to(device)
        self.config = replace(self.config, head_hidden=hidden, head_priors=priors)
        return self.pixel_head

    def detach_pixel_head(self) -> None:
        """Back to the network's own output layer."""
        self.pixel_head = None
        self.config = replace(self.config, head_hidden=0, head_priors=0)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` with what to do when ``x`` cannot go through the network."""
        if x.dim() != 4:
            raise ValueError("VM-UNet expects a (batch, channels, height, width) tensor, got "
                             f"shape {tuple(x.shape)}")
        channels, (h, w) = x.shape[1], x.shape[2:]
        if channels not in (1, self.config.in_chans):
            raise ValueError(f"this model takes {self.config.in_chans}-channel (or 1-channel) "
                             f"images, got {channels} channels")
        m = self.config.size_multiple
        if h % m or w % m or h == 0 or w == 0:
            raise ValueError(
                f"VM-UNet needs image sides that are multiples of {m}, got {h}x{w}; pad or "
                f"resize to {math.ceil(h / m) * m}x{math.ceil(w / m) * m} (the Segmenter does "
                "this for you)"
            )

    def set_scan_backend(self, name: str | None) -> None:
        """Force a selective-scan backend for every block (None: choose automatically)."""
        for module in self.modules():
            if isinstance(module, SS2D):
                module.scan_backend = name

    def scan_backend_for(self, device: torch.device | str) -> str:
        """The scan backend this model uses on ``device`` (raises if a forced one can't run)."""
        forced = next((m.scan_backend for m in self.modules() if isinstance(m, SS2D)), None)
        return resolve_backend(device, forced)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute block activations in backward: less memory for training, ~30% more time."""
        for layer in (*self.vmunet.layers, *self.vmunet.layers_up):
            layer.use_checkpoint = enabled

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extend_head(self, num_classes: int) -> None:
        """Grow the head to ``num_classes`` keeping what it knows. A one-class (sigmoid) model
        becomes [background logit 0, its logit], which gives the same probabilities under
        softmax; new classes start with small weights and a low bias, i.e. improbable."""
        old = self.vmunet.final_conv
        old_classes = self.config.num_classes
        new = nn.Conv2d(old.in_channels, num_classes, 1).to(old.weight.device)
        with torch.no_grad():
            new.weight.normal_(0, 1e-3)
            if old_classes == 1:
                new.weight[0].zero_()
                new.bias[0] = 0.0
                new.weight[1] = old.weight[0]
                new.bias[1] = old.bias[0]
                first_new = 2
            else:
                new.weight[:old_classes] = old.weight
                new.bias[:old_classes] = old.bias
                first_new = old_classes
            # e^-10 of the mass: existing predictions are unchanged, yet the gradient of the
            # cross-entropy for a painted new class is strong.
            new.bias[first_new:] = min(0.0, float(old.bias.min())) - 10.0
        self.vmunet.final_conv = new
        self.detach_pixel_head()  # its classes no longer fit; fine-tuning fits a new one
        self.config = replace(self.config, num_classes=num_classes)
        self.info = self.info.with_classes(num_classes)
