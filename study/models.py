"""AudioFuse models, their ablation variants, and an Audio Spectrogram Transformer.

Every model is an :class:`AudioClassifier`: up to two branches and one head.

* ``forward_features(spec, wave) -> dict[str, Tensor]`` runs the branches;
* ``forward_head(features) -> Tensor`` turns that dict into logits;
* ``forward(spec, wave) == forward_head(forward_features(spec, wave))``.

The split exists for test-time branch ablation: replace the entries a head
reads for one branch (``model.branch_feature_keys[branch]``) by their training
mean or by zeros, then call ``forward_head``.

Inputs are ``spec`` (B, in_chans, H, W), a log-Mel image (AudioFuse: 1 x 224 x
224 scaled to [0, 1]; AST: 1 x 128 mel bins x T frames), and ``wave`` (B, 1, L),
a waveform in the units the data pipeline produces. A model without a branch
accepts ``None`` for its input. Logits are (B,) when ``num_classes == 1`` and
(B, num_classes) otherwise.

Feature entries (B = batch):

* ``"spectrogram"`` (B, spec_dense): pooled ViT tokens after the branch Dense
  (or (B, vit_dim) when the branch has no Dense: cross-attention and AST);
* ``"spectrogram_tokens"`` (B, N, vit_dim): normalised ViT patch tokens, N patches;
* ``"waveform"`` (B, wave_dense): pooled CNN features after the branch Dense
  (or (B, wave_filters[-1]) without it);
* ``"waveform_steps"`` (B, T, wave_filters[-1]): CNN output per time step.

Choices where the papers are silent (the official Keras notebooks are not
public; their summaries in ``shared/seeds`` name the layers but not these):

* the branch Dense(192) / Dense(64) layers are linear (``branch_activation=
  "none"``, the Keras ``Dense`` default): the summaries give ReLU for the fusion
  Dense only;
* the 1D convolutions pad like Keras ``padding="same"`` (``wave_padding``);
* the ViT is class-token free with layer norm before the token average
  (Keras: LayerNormalization -> GlobalAveragePooling1D);
* Conv1d / Linear layers outside timm's ViT use the Keras defaults (Glorot
  uniform weights, zero bias) and BatchNorm uses Keras' momentum 0.99 and
  epsilon 1e-3;
* the single-branch heads are Dropout -> Dense(num_classes), the same
  regularisation as the fusion head's last layer.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from types import MappingProxyType

import torch
from timm.layers import PatchEmbed, resample_abs_pos_embed, to_2tuple
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from torch.nn import functional as F

from .registry import Registry

__all__ = [
    "ARCHITECTURES",
    "AST_BASE",
    "AudioClassifier",
    "CheckpointReport",
    "FUSIONS",
    "ModelConfig",
    "OverlappingPatchEmbed",
    "count_parameters",
    "create_model",
    "load_ast_checkpoint",
    "register_model",
]

#: ``model.architecture`` -> a builder ``f(config: ModelConfig) -> AudioClassifier``
ARCHITECTURES = Registry("architecture", "model.architecture")
#: ``model.fusion`` -> a fusion head class ``Head(spec_dim, wave_dim, config)`` with ``input_keys``
FUSIONS = Registry("fusion head", "model.fusion")
_MODEL_REGISTRIES = {"architecture": ARCHITECTURES, "fusion": FUSIONS}
_ACTIVATIONS = {"none": nn.Identity, "relu": nn.ReLU, "gelu": nn.GELU}
_VIT_POOLS = ("avg", "token")
_WAVE_PADDINGS = ("same", "valid")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(name: str, value) -> int:
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _positive_pair(name: str, value) -> tuple[int, int]:
    pair = tuple(value) if isinstance(value, (list, tuple)) else (value, value)
    if len(pair) != 2 or not all(_is_int(v) and v >= 1 for v in pair):
        raise ValueError(f"{name} must be a positive integer or a pair of them, got {value!r}")
    return pair


def _choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def _flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


_BRANCH_FEATURES = {"spectrogram": ("spectrogram", "spectrogram_tokens"), "waveform": ("waveform", "waveform_steps")}


def register_model(name: str, *, kind: str = "architecture"):
    """Register an architecture or a fusion head under ``name``, as timm's ``@register_model`` does.

    ``kind="architecture"`` decorates a builder ``f(config: ModelConfig) -> AudioClassifier``,
    built for ``model.architecture: NAME``. ``kind="fusion"`` decorates a head class
    ``Head(spec_dim, wave_dim, config)``, built by the ``"fusion"`` architecture for
    ``model.fusion: NAME``: its ``input_keys`` maps each branch to the feature entries it
    reads (what test-time branch ablation replaces), its ``forward(features)`` returns
    (B, num_classes) logits; ``spec_dim`` / ``wave_dim`` are the widths of what it reads
    (the pooled vectors, or the sequences when it reads only those: module docstring).

    Examples
    --------
    >>> @register_model("gated_sum", kind="fusion")
    ... class GatedSum(nn.Module):
    ...     input_keys = {"spectrogram": ("spectrogram",), "waveform": ("waveform",)}
    ...     ...
    """
    if kind not in _MODEL_REGISTRIES:
        raise ValueError(f"register_model: kind must be one of {sorted(_MODEL_REGISTRIES)}, got {kind!r}")

    def register(obj):
        if kind == "fusion":
            _check_input_keys(name, obj)
        return _MODEL_REGISTRIES[kind].register(name, obj)

    return register


def _check_input_keys(name: str, head) -> None:
    keys = getattr(head, "input_keys", None)
    if not isinstance(keys, Mapping) or set(keys) != set(_BRANCH_FEATURES):
        raise TypeError(
            f"fusion head {name!r}: input_keys must map 'spectrogram' and 'waveform' to the feature entries "
            f"the head reads, e.g. {{'spectrogram': ('spectrogram',), 'waveform': ('waveform',)}}; got {keys!r}"
        )
    for branch, entries in keys.items():
        if not entries or set(entries) - set(_BRANCH_FEATURES[branch]):
            raise TypeError(
                f"fusion head {name!r}: input_keys[{branch!r}] must be some of {_BRANCH_FEATURES[branch]}, got {entries!r}"
            )


@dataclass(frozen=True)
class ModelConfig:
    """Every size of every model; defaults are the AudioFuse paper's.

    Parameters
    ----------
    architecture : str, a name of :data:`ARCHITECTURES`
        Built in: "spectrogram" and "waveform" (single-branch baselines), "fusion"
        (the two-branch AudioFuse model) and "ast" (an Audio Spectrogram Transformer,
        spectrogram branch only; see :data:`AST_BASE`).
    fusion : str, a name of :data:`FUSIONS`
        Head of a ``"fusion"`` model, ignored by other architectures; built in:
        "concat", "sum", "cross_attention", "film", "logit_ensemble".
    img_size : int or (H, W)
        Spectrogram image size in pixels (mel bins x frames for AST).
    patch_size : int or (h, w)
        ViT patch size in pixels.
    patch_stride : int, (h, w) or None
        Step between patches; None means ``patch_size`` (non-overlapping). AST uses 10.
    in_chans : int
        Spectrogram image channels.
    vit_dim, vit_depth, vit_heads, vit_mlp_ratio : int, int, int, float
        ViT width, number of blocks, attention heads, MLP hidden / width.
    vit_dropout : float
        Dropout inside the ViT blocks (attention output and MLP).
    vit_pool : {"avg", "token"}
        Average the patch tokens (AudioFuse), or average the prefix tokens:
        the class token and, with ``dist_token``, the distillation token (AST).
    class_token, dist_token : bool
        Prepend a class token; also a distillation token after it (AST/DeiT).
    spec_dense : int
        Width of the Dense layer closing the spectrogram branch.
    wave_filters : tuple of int
        Filters of each Conv1d -> BatchNorm -> ReLU block of the waveform branch.
    wave_kernel, wave_stride : int
        Kernel size and stride (samples) of every Conv1d.
    wave_padding : {"same", "valid"}
        Keras padding mode of the Conv1d layers.
    wave_dense : int
        Width of the Dense layer closing the waveform branch.
    branch_activation : {"none", "relu", "gelu"}
        Activation after each branch Dense.
    fusion_dim : int
        Hidden width of the fusion heads (and the common width of cross-attention).
    fusion_heads : int
        Attention heads of the cross-attention fusion.
    dropout : float
        Dropout before the final Dense of every head.
    num_classes : int
        1 for a single binary logit, otherwise one logit per class.
    branch_heads : bool
        ``"fusion"`` only: one more single-branch head per branch, on its pooled
        features, for the auxiliary per-branch losses of training (a study sets it
        from ``train.branch_loss_weight``). Predictions and ablations never use them.
    """

    architecture: str = "fusion"
    fusion: str = "concat"
    img_size: int | tuple[int, int] = 224
    patch_size: int | tuple[int, int] = 16
    patch_stride: int | tuple[int, int] | None = None
    in_chans: int = 1
    vit_dim: int = 192
    vit_depth: int = 6
    vit_heads: int = 8
    vit_mlp_ratio: float = 2.0
    vit_dropout: float = 0.0
    vit_pool: str = "avg"
    class_token: bool = False
    dist_token: bool = False
    spec_dense: int = 192
    wave_filters: tuple[int, ...] = (64, 128, 256)
    wave_kernel: int = 16
    wave_stride: int = 4
    wave_padding: str = "same"
    wave_dense: int = 64
    branch_activation: str = "none"
    fusion_dim: int = 192
    fusion_heads: int = 8
    dropout: float = 0.5
    num_classes: int = 1
    branch_heads: bool = False

    def __post_init__(self):
        for name, registry in (("architecture", ARCHITECTURES), ("fusion", FUSIONS)):
            if getattr(self, name) not in registry:
                raise ValueError(f"{name} {registry.unknown(getattr(self, name))}")
        img_size = _positive_pair("img_size", self.img_size)
        patch_size = _positive_pair("patch_size", self.patch_size)
        if self.patch_stride is not None:
            object.__setattr__(self, "patch_stride", _positive_pair("patch_stride", self.patch_stride))
        if any(p > s for p, s in zip(patch_size, img_size)):
            raise ValueError(f"patch_size {self.patch_size!r} is larger than img_size {self.img_size!r}")
        object.__setattr__(self, "img_size", img_size)
        object.__setattr__(self, "patch_size", patch_size)
        for name in (
            "in_chans",
            "vit_dim",
            "vit_depth",
            "vit_heads",
            "spec_dense",
            "wave_kernel",
            "wave_stride",
            "wave_dense",
            "fusion_dim",
            "fusion_heads",
            "num_classes",
        ):
            _positive_int(name, getattr(self, name))
        if self.vit_dim % self.vit_heads:
            raise ValueError(f"vit_dim ({self.vit_dim}) must be divisible by vit_heads ({self.vit_heads})")
        if self.architecture == "fusion" and self.fusion == "cross_attention" and self.fusion_dim % self.fusion_heads:
            raise ValueError(f"fusion_dim ({self.fusion_dim}) must be divisible by fusion_heads ({self.fusion_heads})")
        if (
            not isinstance(self.vit_mlp_ratio, (int, float))
            or isinstance(self.vit_mlp_ratio, bool)
            or self.vit_mlp_ratio <= 0
        ):
            raise ValueError(f"vit_mlp_ratio must be a positive number, got {self.vit_mlp_ratio!r}")
        for name in ("vit_dropout", "dropout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1), got {value!r}")
        _choice("vit_pool", self.vit_pool, _VIT_POOLS)
        _flag("class_token", self.class_token)
        _flag("dist_token", self.dist_token)
        if self.dist_token and not self.class_token:
            raise ValueError("dist_token=True needs class_token=True (AST/DeiT put the class token first)")
        if self.vit_pool == "token" and not self.class_token:
            raise ValueError("vit_pool='token' needs class_token=True")
        filters = self.wave_filters
        if not isinstance(filters, (list, tuple)) or not filters:
            raise ValueError(f"wave_filters must be a non-empty sequence of positive integers, got {filters!r}")
        for index, value in enumerate(filters):
            _positive_int(f"wave_filters[{index}]", value)
        object.__setattr__(self, "wave_filters", tuple(filters))
        _choice("wave_padding", self.wave_padding, _WAVE_PADDINGS)
        _choice("branch_activation", self.branch_activation, _ACTIVATIONS)
        _flag("branch_heads", self.branch_heads)
        if self.branch_heads and self.architecture != "fusion":
            raise ValueError(f"branch_heads=True needs architecture 'fusion', got {self.architecture!r}")

    @classmethod
    def from_dict(cls, values: Mapping) -> ModelConfig:
        """Build a config from a mapping (a YAML search space entry); unknown keys are errors."""
        if not isinstance(values, Mapping):
            raise TypeError(f"config must be a mapping or ModelConfig, got {type(values).__name__}")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown model config key(s) {unknown}; known keys are {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict:
        """Plain dict of every field (tuples kept), the inverse of :meth:`from_dict`."""
        return dataclasses.asdict(self)


#: AST-Base as in Gong et al. (2021) and the SAM-AST paper: DeiT-Base sizes, 16 x 16
#: patches every 10 pixels, class + distillation tokens, 4 ICBHI classes. The input is
#: 128 mel bins x 798 frames: 8 s at 16 kHz, Kaldi fbank with 25 ms windows every 10 ms
#: (1 + (128000 - 400) // 160 = 798), giving a 12 x 79 patch grid.
AST_BASE = MappingProxyType(
    {
        "architecture": "ast",
        "img_size": (128, 798),
        "patch_size": 16,
        "patch_stride": 10,
        "vit_dim": 768,
        "vit_depth": 12,
        "vit_heads": 12,
        "vit_mlp_ratio": 4.0,
        "vit_pool": "token",
        "class_token": True,
        "dist_token": True,
        "dropout": 0.0,
        "num_classes": 4,
    }
)


class OverlappingPatchEmbed(PatchEmbed):
    """timm ``PatchEmbed`` whose patches overlap: the convolution moves by ``stride``.

    timm's PatchEmbed has no stride argument (its stride is the patch size); AST
    takes 16 x 16 patches every 10 pixels. The grid is ``(size - patch) // stride + 1``
    per axis, e.g. 12 x 101 for a 128 x 1024 input.
    """

    def __init__(
        self, img_size, patch_size, stride, in_chans: int = 1, embed_dim: int = 768, bias: bool = True, **kwargs
    ):
        # read by _init_img_size, which PatchEmbed.__init__ calls
        self.stride = to_2tuple(stride)
        super().__init__(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim, bias=bias, **kwargs
        )
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.stride, bias=bias)

    def _init_img_size(self, img_size):
        img_size = to_2tuple(img_size)
        grid_size = tuple((s - p) // st + 1 for s, p, st in zip(img_size, self.patch_size, self.stride))
        return img_size, grid_size, grid_size[0] * grid_size[1]

    def feat_ratio(self, as_scalar=True):
        return max(self.stride) if as_scalar else self.stride


class ViTEncoder(nn.Module):
    """timm VisionTransformer trunk: image (B, C, H, W) -> pooled (B, D), patch tokens (B, N, D)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        stride = config.patch_stride
        embed_layer = (
            PatchEmbed if stride in (None, config.patch_size) else partial(OverlappingPatchEmbed, stride=stride)
        )
        # timm's register token sits right after the class token and is covered by the
        # position embedding: exactly AST/DeiT's distillation token
        self.vit = VisionTransformer(
            img_size=config.img_size,
            patch_size=config.patch_size,
            in_chans=config.in_chans,
            num_classes=0,
            global_pool="",
            embed_dim=config.vit_dim,
            depth=config.vit_depth,
            num_heads=config.vit_heads,
            mlp_ratio=config.vit_mlp_ratio,
            class_token=config.class_token,
            reg_tokens=int(config.dist_token),
            proj_drop_rate=config.vit_dropout,
            attn_drop_rate=config.vit_dropout,
            embed_layer=embed_layer,
        )
        self.pool = config.vit_pool
        self.img_size = config.img_size
        self.in_chans = config.in_chans

    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(self.vit.patch_embed.grid_size)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        if image.ndim != 4 or image.shape[1] != self.in_chans or tuple(image.shape[2:]) != self.img_size:
            raise ValueError(
                f"spec must have shape (B, {self.in_chans}, {self.img_size[0]}, {self.img_size[1]}), "
                f"got {tuple(image.shape)}"
            )
        tokens = self.vit.forward_features(image)  # final LayerNorm applied
        prefix_count = self.vit.num_prefix_tokens
        prefix, patches = tokens[:, :prefix_count], tokens[:, prefix_count:]
        pooled = patches.mean(dim=1) if self.pool == "avg" else prefix.mean(dim=1)
        return pooled, patches


def _dense(in_dim: int, out_dim: int, activation: str) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, out_dim), _ACTIVATIONS[activation]())


class SpectrogramBranch(nn.Module):
    """ViT on the log-Mel image -> token average -> Dense(spec_dense) (``project=False``: no Dense)."""

    def __init__(self, config: ModelConfig, project: bool = True):
        super().__init__()
        self.encoder = ViTEncoder(config)
        self.projection = _dense(config.vit_dim, config.spec_dense, config.branch_activation) if project else None
        self.out_dim = config.spec_dense if project else config.vit_dim
        self.token_dim = config.vit_dim

    def forward(self, spec: Tensor) -> dict[str, Tensor]:
        pooled, tokens = self.encoder(spec)
        if self.projection is not None:
            pooled = self.projection(pooled)
        return {"spectrogram": pooled, "spectrogram_tokens": tokens}


def _same_padding(length: int, kernel: int, stride: int) -> tuple[int, int]:
    # torch's padding="same" rejects stride > 1, so pad like Keras/TF: ceil(L / stride) outputs
    out_length = -(-length // stride)
    total = max((out_length - 1) * stride + kernel - length, 0)
    return total // 2, total - total // 2


class ConvBlock1d(nn.Module):
    """Conv1d -> BatchNorm1d -> ReLU on (B, C_in, L) -> (B, C_out, L')."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, padding: str):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel, stride=stride)
        # Keras BatchNormalization defaults: running-average momentum 0.99, epsilon 1e-3
        self.norm = nn.BatchNorm1d(out_channels, eps=1e-3, momentum=0.01)
        self.padding = padding

    def forward(self, x: Tensor) -> Tensor:
        if self.padding == "same":
            x = F.pad(x, _same_padding(x.shape[-1], self.conv.kernel_size[0], self.conv.stride[0]))
        return F.relu(self.norm(self.conv(x)))


class WaveformBranch(nn.Module):
    """Stacked Conv1d blocks on the raw waveform -> time average -> Dense(wave_dense)."""

    def __init__(self, config: ModelConfig, project: bool = True):
        super().__init__()
        channels = (1, *config.wave_filters)
        self.blocks = nn.Sequential(
            *[
                ConvBlock1d(c_in, c_out, config.wave_kernel, config.wave_stride, config.wave_padding)
                for c_in, c_out in zip(channels[:-1], channels[1:])
            ]
        )
        last = config.wave_filters[-1]
        self.projection = _dense(last, config.wave_dense, config.branch_activation) if project else None
        self.out_dim = config.wave_dense if project else last
        self.token_dim = last
        self.min_length = self._min_length(config)

    @staticmethod
    def _min_length(config: ModelConfig) -> int:
        if config.wave_padding == "same":
            return 1
        length = 1  # shortest input giving one output step, walked back through the blocks
        for _ in config.wave_filters:
            length = (length - 1) * config.wave_stride + config.wave_kernel
        return length

    def forward(self, wave: Tensor) -> dict[str, Tensor]:
        if wave.ndim != 3 or wave.shape[1] != 1:
            raise ValueError(f"wave must have shape (B, 1, L), got {tuple(wave.shape)}")
        if wave.shape[-1] < self.min_length:
            raise ValueError(f"wave has {wave.shape[-1]} samples; the convolutions need at least {self.min_length}")
        steps = self.blocks(wave)  # (B, C, T)
        pooled = steps.mean(dim=-1)
        if self.projection is not None:
            pooled = self.projection(pooled)
        return {"waveform": pooled, "waveform_steps": steps.transpose(1, 2)}


def _classifier(in_dim: int, config: ModelConfig) -> nn.Sequential:
    """The paper's fusion MLP: Dense(fusion_dim) -> ReLU -> Dropout -> Dense(num_classes)."""
    return nn.Sequential(
        nn.Linear(in_dim, config.fusion_dim),
        nn.ReLU(),
        nn.Dropout(config.dropout),
        nn.Linear(config.fusion_dim, config.num_classes),
    )


class SingleBranchHead(nn.Module):
    """Dropout -> Dense(num_classes) on one branch's pooled features."""

    def __init__(self, branch: str, in_dim: int, config: ModelConfig):
        super().__init__()
        self.key = branch
        self.input_keys = {branch: (branch,)}
        self.classifier = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(in_dim, config.num_classes))

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return self.classifier(features[self.key])


class ASTHead(nn.Module):
    """AST's ``mlp_head``: LayerNorm -> (Dropout) -> Dense(num_classes) on the pooled tokens."""

    def __init__(self, in_dim: int, config: ModelConfig):
        super().__init__()
        self.input_keys = {"spectrogram": ("spectrogram",)}
        self.classifier = nn.Sequential(
            nn.LayerNorm(in_dim), nn.Dropout(config.dropout), nn.Linear(in_dim, config.num_classes)
        )

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return self.classifier(features["spectrogram"])


@register_model("concat", kind="fusion")
class ConcatFusionHead(nn.Module):
    """AudioFuse: concat(spectrogram, waveform) -> Dense -> ReLU -> Dropout -> logits."""

    input_keys = {"spectrogram": ("spectrogram",), "waveform": ("waveform",)}

    def __init__(self, spec_dim: int, wave_dim: int, config: ModelConfig):
        super().__init__()
        self.classifier = _classifier(spec_dim + wave_dim, config)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return self.classifier(torch.cat([features["spectrogram"], features["waveform"]], dim=-1))


@register_model("sum", kind="fusion")
class SumFusionHead(nn.Module):
    """Project both branches to fusion_dim and add -> ReLU -> Dropout -> logits."""

    input_keys = {"spectrogram": ("spectrogram",), "waveform": ("waveform",)}

    def __init__(self, spec_dim: int, wave_dim: int, config: ModelConfig):
        super().__init__()
        self.spec_proj = nn.Linear(spec_dim, config.fusion_dim)
        self.wave_proj = nn.Linear(wave_dim, config.fusion_dim)
        self.classifier = nn.Sequential(
            nn.ReLU(), nn.Dropout(config.dropout), nn.Linear(config.fusion_dim, config.num_classes)
        )

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return self.classifier(self.spec_proj(features["spectrogram"]) + self.wave_proj(features["waveform"]))


@register_model("cross_attention", kind="fusion")
class CrossAttentionFusionHead(nn.Module):
    """Each branch's sequence attends to the other's; both are pooled, concatenated, classified.

    Spectrogram tokens (B, N, vit_dim) and waveform steps (B, T, C) are projected to
    fusion_dim; spectrogram tokens query the waveform steps and vice versa (residual
    + LayerNorm, as in a transformer block); each sequence is averaged over its
    positions and the two vectors go through the paper's fusion MLP.
    """

    input_keys = {"spectrogram": ("spectrogram_tokens",), "waveform": ("waveform_steps",)}

    def __init__(self, spec_dim: int, wave_dim: int, config: ModelConfig):
        super().__init__()
        width = config.fusion_dim
        self.spec_proj = nn.Linear(spec_dim, width)
        self.wave_proj = nn.Sequential(nn.Linear(wave_dim, width), nn.LayerNorm(width))
        self.spec_attends_wave = nn.MultiheadAttention(width, config.fusion_heads, batch_first=True)
        self.wave_attends_spec = nn.MultiheadAttention(width, config.fusion_heads, batch_first=True)
        self.spec_norm = nn.LayerNorm(width)
        self.wave_norm = nn.LayerNorm(width)
        self.classifier = _classifier(2 * width, config)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        spec = self.spec_proj(features["spectrogram_tokens"])
        wave = self.wave_proj(features["waveform_steps"])
        spec_update, _ = self.spec_attends_wave(spec, wave, wave, need_weights=False)
        wave_update, _ = self.wave_attends_spec(wave, spec, spec, need_weights=False)
        spec = self.spec_norm(spec + spec_update).mean(dim=1)
        wave = self.wave_norm(wave + wave_update).mean(dim=1)
        return self.classifier(torch.cat([spec, wave], dim=-1))


@register_model("film", kind="fusion")
class FiLMFusionHead(nn.Module):
    """Gated FiLM: waveform features modulate the spectrogram features, then the fusion MLP.

    ``out = (1 - g) * s + g * (gamma * s + beta)`` with ``g = sigmoid(W_g w)``,
    ``gamma = 1 + W_gamma w`` and ``beta = W_beta w``: the gate lets the model
    fall back to the unmodulated spectrogram features.
    """

    input_keys = {"spectrogram": ("spectrogram",), "waveform": ("waveform",)}

    def __init__(self, spec_dim: int, wave_dim: int, config: ModelConfig):
        super().__init__()
        self.film = nn.Linear(wave_dim, 3 * spec_dim)
        self.classifier = _classifier(spec_dim, config)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        spec = features["spectrogram"]
        gate, scale, shift = self.film(features["waveform"]).chunk(3, dim=-1)
        gate = torch.sigmoid(gate)
        modulated = (1.0 + scale) * spec + shift
        return self.classifier((1.0 - gate) * spec + gate * modulated)


@register_model("logit_ensemble", kind="fusion")
class LogitEnsembleHead(nn.Module):
    """Two single-branch heads whose logits are averaged."""

    input_keys = {"spectrogram": ("spectrogram",), "waveform": ("waveform",)}

    def __init__(self, spec_dim: int, wave_dim: int, config: ModelConfig):
        super().__init__()
        self.spectrogram_head = SingleBranchHead("spectrogram", spec_dim, config)
        self.waveform_head = SingleBranchHead("waveform", wave_dim, config)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return 0.5 * (self.spectrogram_head(features) + self.waveform_head(features))


def _init_keras_style(module: nn.Module) -> None:
    # the official models are Keras: Glorot-uniform kernels and zero biases
    if isinstance(module, (nn.Linear, nn.Conv1d)):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class AudioClassifier(nn.Module):
    """A spectrogram branch and/or a waveform branch, and a head.

    Attributes
    ----------
    spectrogram_branch, waveform_branch : nn.Module or None
        The branches the architecture uses.
    head : nn.Module
        Maps the features dict to logits (B, num_classes).
    branch_heads : nn.ModuleDict or None
        With ``config.branch_heads``: a single-branch head per branch, trained by
        auxiliary losses (:meth:`forward_train`) so that the fusion head cannot lean
        on one branch while the other stops learning.
    branch_feature_keys : dict[str, tuple[str, ...]]
        For each branch, the feature entries the head reads: the entries to
        replace for test-time ablation of that branch.
    """

    def __init__(
        self,
        config: ModelConfig,
        head: nn.Module,
        spectrogram_branch: nn.Module | None = None,
        waveform_branch: nn.Module | None = None,
    ):
        super().__init__()
        self.config = config
        self.spectrogram_branch = spectrogram_branch
        self.waveform_branch = waveform_branch
        self.head = head
        if self.waveform_branch is not None:
            self.waveform_branch.apply(_init_keras_style)
        if self.spectrogram_branch is not None and self.spectrogram_branch.projection is not None:
            self.spectrogram_branch.projection.apply(_init_keras_style)
        self.head.apply(_init_keras_style)
        self.branch_heads = None
        if config.branch_heads:  # built last, so the other weights start as they would without them
            dims = {"spectrogram": self.spectrogram_branch.out_dim, "waveform": self.waveform_branch.out_dim}
            self.branch_heads = nn.ModuleDict({b: SingleBranchHead(b, d, config) for b, d in dims.items()})
            self.branch_heads.apply(_init_keras_style)

    @property
    def branch_feature_keys(self) -> dict[str, tuple[str, ...]]:
        return dict(self.head.input_keys)

    def forward_features(self, spec: Tensor | None = None, wave: Tensor | None = None) -> dict[str, Tensor]:
        """Run the branches: spec (B, in_chans, H, W), wave (B, 1, L) -> feature dict (module docstring)."""
        branches = [
            (name, branch, value)
            for name, branch, value in (("spec", self.spectrogram_branch, spec), ("wave", self.waveform_branch, wave))
            if branch is not None
        ]
        for name, _, value in branches:
            if not isinstance(value, Tensor):
                raise TypeError(
                    f"{name} must be a Tensor for architecture {self.config.architecture!r}, got {type(value).__name__}"
                )
        if len(branches) == 2 and spec.shape[0] != wave.shape[0]:
            raise ValueError(f"spec and wave batch sizes differ: {spec.shape[0]} vs {wave.shape[0]}")
        features: dict[str, Tensor] = {}
        for _, branch, value in branches:
            features.update(branch(value))
        return features

    def forward_head(self, features: dict[str, Tensor]) -> Tensor:
        """Features dict -> logits (B,) if num_classes == 1 else (B, num_classes)."""
        return self._logits(self.head(features))

    def _logits(self, head_output: Tensor) -> Tensor:
        """A head's (B, num_classes) output as the model's logits: (B,) for one binary logit."""
        return head_output.squeeze(-1) if self.config.num_classes == 1 else head_output

    def forward(self, spec: Tensor | None = None, wave: Tensor | None = None) -> Tensor:
        return self.forward_head(self.forward_features(spec, wave))

    def forward_train(self, spec: Tensor | None = None, wave: Tensor | None = None) -> tuple[Tensor, list[Tensor]]:
        """(logits of :meth:`forward`, logits of each branch head): the branch heads' list is empty
        without ``config.branch_heads``; each entry is shaped like the logits."""
        features = self.forward_features(spec, wave)
        logits = self.forward_head(features)
        if self.branch_heads is None:
            return logits, []
        return logits, [self._logits(head(features)) for head in self.branch_heads.values()]


@register_model("spectrogram")
def spectrogram_model(config: ModelConfig) -> AudioClassifier:
    """The spectrogram branch alone, with a single-branch head."""
    branch = SpectrogramBranch(config)
    return AudioClassifier(config, SingleBranchHead("spectrogram", branch.out_dim, config), spectrogram_branch=branch)


@register_model("waveform")
def waveform_model(config: ModelConfig) -> AudioClassifier:
    """The waveform branch alone, with a single-branch head."""
    branch = WaveformBranch(config)
    return AudioClassifier(config, SingleBranchHead("waveform", branch.out_dim, config), waveform_branch=branch)


@register_model("fusion")
def fusion_model(config: ModelConfig) -> AudioClassifier:
    """Both branches and the fusion head ``config.fusion`` (a name of :data:`FUSIONS`).

    A branch ends in its Dense layer only when the head reads its pooled vector: a head reading
    token sequences alone (cross-attention) would leave that layer a dead weight.
    """
    head_class = FUSIONS.lookup(config.fusion)
    pooled = {branch: branch in head_class.input_keys[branch] for branch in _BRANCH_FEATURES}
    spectrogram = SpectrogramBranch(config, pooled["spectrogram"])
    waveform = WaveformBranch(config, pooled["waveform"])
    spec_dim = spectrogram.out_dim if pooled["spectrogram"] else spectrogram.token_dim
    wave_dim = waveform.out_dim if pooled["waveform"] else waveform.token_dim
    return AudioClassifier(config, head_class(spec_dim, wave_dim, config), spectrogram, waveform)


@register_model("ast")
def ast_model(config: ModelConfig) -> AudioClassifier:
    """An Audio Spectrogram Transformer: the ViT's pooled prefix tokens into AST's head (:data:`AST_BASE`)."""
    branch = SpectrogramBranch(config, project=False)
    return AudioClassifier(config, ASTHead(branch.out_dim, config), spectrogram_branch=branch)


def create_model(config: dict | ModelConfig) -> AudioClassifier:
    """Build any model of the study from a :class:`ModelConfig` or a dict of its fields: the builder
    :data:`ARCHITECTURES` holds for ``config.architecture``.

    Examples
    --------
    >>> model = create_model({"architecture": "fusion", "fusion": "concat"})  # AudioFuse
    >>> ast = create_model({**AST_BASE, "num_classes": 2})
    """
    if isinstance(config, Mapping):
        config = ModelConfig.from_dict(config)
    if not isinstance(config, ModelConfig):
        raise TypeError(f"config must be a dict or ModelConfig, got {type(config).__name__}")
    builder = ARCHITECTURES.lookup(config.architecture)
    model = builder(config)
    if not isinstance(model, AudioClassifier):
        raise TypeError(
            f"architecture {config.architecture!r} ({builder.__module__}.{builder.__qualname__}) returned "
            f"{type(model).__name__}, not an AudioClassifier"
        )
    return model


def _count(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def count_parameters(model: AudioClassifier) -> dict[str, int]:
    """Parameter counts: ``"spectrogram"`` / ``"waveform"`` (present branches), ``"head"``, ``"total"``."""
    if not isinstance(model, AudioClassifier):
        raise TypeError(f"model must be an AudioClassifier, got {type(model).__name__}")
    counts = {}
    for name, branch in (("spectrogram", model.spectrogram_branch), ("waveform", model.waveform_branch)):
        if branch is not None:
            counts[name] = _count(branch)
    counts["head"] = _count(model.head)
    counts["total"] = _count(model)
    return counts


@dataclass(frozen=True)
class CheckpointReport:
    """What :func:`load_ast_checkpoint` did.

    loaded: model keys that received checkpoint values; missing: model keys left
    at their initialisation (the new head); unexpected: checkpoint keys with no
    counterpart in the model; skipped: checkpoint head keys left out on purpose;
    resized: checkpoint key -> (old shape, new shape) for interpolated tensors.
    """

    loaded: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    skipped: tuple[str, ...]
    resized: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]


_AST_HEAD_PREFIXES = ("mlp_head.", "v.head.", "v.head_dist.")


def load_ast_checkpoint(
    model: AudioClassifier,
    path: str | os.PathLike,
    source_grid: tuple[int, int] = (12, 101),
) -> CheckpointReport:
    """Load an AudioSet-pretrained AST checkpoint (YuanGongND/ast layout) into ``model``'s ViT.

    Keys ``[module.]v.<name>`` map onto ``spectrogram_branch.encoder.vit.<name>``
    (``v.dist_token`` onto timm's ``reg_token``). The heads (``mlp_head.*`` and
    DeiT's ImageNet ``v.head*``) are left out. The position embedding is
    interpolated (timm's bicubic ``resample_abs_pos_embed``) from ``source_grid``,
    AST's 12 x 101 patch grid of a 128 x 1024 input, to the model's grid; its
    class/distillation entries are copied. Any other shape mismatch raises.

    Parameters
    ----------
    model : AudioClassifier
        A model with a spectrogram branch whose ViT matches the checkpoint's sizes
        (``AST_BASE`` for the public ``audioset_10_10_0.4593.pth``).
    path : str or PathLike
        A ``torch.save``-d state dict on local disk.
    source_grid : (int, int)
        Patch grid (frequency, time) the checkpoint's position embedding was trained on.
    """
    if not isinstance(model, AudioClassifier) or model.spectrogram_branch is None:
        raise TypeError(f"model must be an AudioClassifier with a spectrogram branch, got {type(model).__name__}")
    source_grid = _positive_pair("source_grid", source_grid)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(f"{os.fspath(path)!r} does not hold a state dict (got {type(state).__name__})")

    vit = model.spectrogram_branch.encoder.vit
    grid = model.spectrogram_branch.encoder.grid_size
    target_prefix = "spectrogram_branch.encoder.vit."
    own = model.state_dict()
    has_dist = any(key.removeprefix("module.") == "v.dist_token" for key in state)
    source_prefix_tokens = 1 + int(has_dist)
    mapped, unexpected, skipped, resized = {}, [], [], {}
    for key, value in state.items():
        name = key.removeprefix("module.")
        if name.startswith(_AST_HEAD_PREFIXES):
            skipped.append(key)
            continue
        if not name.startswith("v."):
            unexpected.append(key)
            continue
        name = name[2:]
        target = target_prefix + ("reg_token" if name == "dist_token" else name)
        if target not in own:
            unexpected.append(key)
            continue
        if name == "pos_embed":
            if vit.num_prefix_tokens != source_prefix_tokens:
                raise ValueError(
                    f"the checkpoint has {source_prefix_tokens} prefix token(s) (class"
                    f"{' + distillation' if has_dist else ''}) but the model has {vit.num_prefix_tokens}; "
                    "set class_token/dist_token to match"
                )
            source_patches = value.shape[1] - source_prefix_tokens
            if source_patches != source_grid[0] * source_grid[1]:
                raise ValueError(
                    f"{key} holds {source_patches} patch positions, which does not match source_grid={source_grid}"
                )
            if grid != source_grid:
                new_value = resample_abs_pos_embed(
                    value, new_size=list(grid), old_size=list(source_grid), num_prefix_tokens=source_prefix_tokens
                )
                resized[key] = (tuple(value.shape), tuple(new_value.shape))
                value = new_value
        if value.shape != own[target].shape:
            raise ValueError(
                f"checkpoint {key} has shape {tuple(value.shape)} but model {target} has {tuple(own[target].shape)}"
            )
        mapped[target] = value
    model.load_state_dict(mapped, strict=False)
    return CheckpointReport(
        loaded=tuple(sorted(mapped)),
        missing=tuple(sorted(set(own) - set(mapped))),
        unexpected=tuple(sorted(unexpected)),
        skipped=tuple(sorted(skipped)),
        resized=resized,
    )
