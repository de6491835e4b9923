"""OpenAI DALL-E's discrete VAE (8192 codes, 8x downsampling), weight-compatible.

Our own implementation of the `dall_e` package's `Encoder` / `Decoder`, with the same
parameter names and shapes (`blocks.input.w`, `blocks.group_1.block_1.res_path.conv_1.w`,
`...id_path.b`, ...), so the official weights load strictly. The conventions are pinned by
`shared/fixtures/dalle-dvae/README.md`; the short version:

* every convolution is `Conv2d` with parameters `w` (out, in, k, k) and `b`, "same" padding;
* encoder: 7x7 input conv, 4 groups of residual blocks of widths (1, 2, 4, 8) * n_hid, 2x2
  max-pool after groups 1-3, then ReLU + 1x1 conv to the vocabulary logits;
* decoder: 1x1 conv from the one-hot map, groups of widths (8, 4, 2, 1) * n_hid with x2 nearest
  upsampling after groups 1-3, then ReLU + 1x1 conv to 2 * output channels;
* block = id_path(x) + post_gain * res_path(x), post_gain = 1 / (4 * n_blk_per_group)^2;
* pixels are squeezed into [eps, 1 - eps] (`map_pixels`, eps = 0.1) before the encoder, and the
  reconstruction is `unmap_pixels(sigmoid(first 3 decoder channels))`.

`DalleTokenizer` wraps both networks behind the `FrameTokenizer` interface with a batched CPU
fast path (inference mode, bf16 autocast, channels-last) and an exact fp32 path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal, Mapping

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from vimpac.config import ConfigError, from_dict, to_dict
from vimpac.io import atomic_path, atomic_write_json, parse_json, write_folder
from vimpac.meta_device import meta_model
from vimpac.tokenizer.base import FrameTokenizer, TokenizerError, check_output_folder
from vimpac.weight_shapes import read_meta_tensors, read_safetensors

LOGIT_LAPLACE_EPS = 0.1
GROUP_COUNT = 4  # a fixed class constant in the `dall_e` package, not a constructor argument
TOKENIZER_JSON = "tokenizer.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1

Precision = Literal["auto", "fp32", "bf16", "fp16"]


# --------------------------------------------------------------------------- pixels


def map_pixels(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [eps, 1 - eps]: the range the dVAE was trained on (logit-Laplace support)."""
    return (1 - 2 * LOGIT_LAPLACE_EPS) * x + LOGIT_LAPLACE_EPS


def unmap_pixels(x: torch.Tensor) -> torch.Tensor:
    """Inverse of `map_pixels`, clamped to [0, 1]."""
    return torch.clamp((x - LOGIT_LAPLACE_EPS) / (1 - 2 * LOGIT_LAPLACE_EPS), 0, 1)


# --------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class DalleEncoderConfig:
    n_hid: int = 256
    n_blk_per_group: int = 2
    input_channels: int = 3
    vocab_size: int = 8192


@dataclass(frozen=True)
class DalleDecoderConfig:
    n_init: int = 128
    n_hid: int = 256
    n_blk_per_group: int = 2
    output_channels: int = 3
    vocab_size: int = 8192


@dataclass(frozen=True)
class DalleConfig:
    """Architecture of both halves; the defaults are the released 8192-code model."""

    encoder: DalleEncoderConfig = field(default_factory=DalleEncoderConfig)
    decoder: DalleDecoderConfig = field(default_factory=DalleDecoderConfig)

    def validate(self, where: str = "config") -> None:
        enc, dec = self.encoder, self.decoder
        checks = [
            ("encoder.n_hid", enc.n_hid, enc.n_hid >= 4 and enc.n_hid % 4 == 0, "a positive multiple of 4"),
            ("decoder.n_hid", dec.n_hid, dec.n_hid >= 4 and dec.n_hid % 4 == 0, "a positive multiple of 4"),
            ("encoder.n_blk_per_group", enc.n_blk_per_group, enc.n_blk_per_group >= 1, ">= 1"),
            ("decoder.n_blk_per_group", dec.n_blk_per_group, dec.n_blk_per_group >= 1, ">= 1"),
            ("encoder.input_channels", enc.input_channels, enc.input_channels >= 1, ">= 1"),
            ("decoder.output_channels", dec.output_channels, dec.output_channels >= 1, ">= 1"),
            ("decoder.n_init", dec.n_init, dec.n_init >= 1, ">= 1"),
            ("encoder.vocab_size", enc.vocab_size, enc.vocab_size >= 2, ">= 2"),
            ("decoder.vocab_size", dec.vocab_size, dec.vocab_size == enc.vocab_size, "equal to encoder.vocab_size"),
        ]
        for name, value, ok, expected in checks:
            if not ok:
                raise ConfigError(f"{where}.{name} = {value}: expected {expected}")


DALLE_PRESETS: dict[str, DalleConfig] = {
    # OpenAI's released encoder.pkl / decoder.pkl.
    "official": DalleConfig(),
    # The architecture of shared/fixtures/dalle-dvae (tests, quick experiments).
    "tiny": DalleConfig(DalleEncoderConfig(32, 1, 3, 512), DalleDecoderConfig(32, 32, 1, 3, 512)),
}


# --------------------------------------------------------------------------- networks


class Conv2d(nn.Module):
    """The package's convolution: parameters named `w` / `b`, stride 1, "same" padding.

    `float32_only` marks the layers the original always runs in fp32 (the encoder's logit
    layer, the decoder's one-hot input layer); under autocast they still compute in fp32,
    which keeps the argmax over 8192 logits faithful in the fast path.
    """

    def __init__(self, n_in: int, n_out: int, kernel: int, float32_only: bool = False) -> None:
        super().__init__()
        if kernel % 2 != 1:
            raise ConfigError(f"Conv2d kernel {kernel}: expected an odd size")
        self.kernel = kernel
        self.float32_only = float32_only
        self.w = nn.Parameter(torch.empty(n_out, n_in, kernel, kernel))
        self.b = nn.Parameter(torch.zeros(n_out))
        nn.init.normal_(self.w, std=1 / (n_in * kernel**2) ** 0.5)  # the package's init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.float32_only and torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return F.conv2d(x.float(), self.w.float(), self.b.float(), padding=(self.kernel - 1) // 2)
        return F.conv2d(x, self.w, self.b, padding=(self.kernel - 1) // 2)


class ResidualBlock(nn.Module):
    """id_path(x) + post_gain * res_path(x); `id_path` is a 1x1 conv only when widths differ.

    The residual path is ReLU-conv x 4 with a quarter of the output width inside; the encoder
    uses kernels (3, 3, 3, 1), the decoder (1, 3, 3, 3).
    """

    def __init__(self, n_in: int, n_out: int, n_layers: int, kernels: tuple[int, int, int, int]) -> None:
        super().__init__()
        n_hid = n_out // 4
        self.post_gain = 1 / n_layers**2
        self.id_path: nn.Module = Conv2d(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        widths = [n_in, n_hid, n_hid, n_hid, n_out]
        layers: list[tuple[str, nn.Module]] = []
        for i, kernel in enumerate(kernels):
            # relu_1 reads the block input, which id_path also needs; the later ReLUs act on
            # fresh conv outputs, so they work in place (saves a pass over large activations).
            relu = nn.ReLU(inplace=i > 0)
            layers += [(f"relu_{i + 1}", relu), (f"conv_{i + 1}", Conv2d(widths[i], widths[i + 1], kernel))]
        self.res_path = nn.Sequential(OrderedDict(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.id_path(x) + self.post_gain * self.res_path(x)


ENCODER_KERNELS = (3, 3, 3, 1)
DECODER_KERNELS = (1, 3, 3, 3)


def _group(blocks: list[nn.Module], tail: tuple[str, nn.Module] | None) -> nn.Sequential:
    entries: list[tuple[str, nn.Module]] = [(f"block_{i + 1}", b) for i, b in enumerate(blocks)]
    if tail is not None:
        entries.append(tail)
    return nn.Sequential(OrderedDict(entries))


class DalleEncoder(nn.Module):
    """Pixels mapped to [0.1, 0.9], float (N, C, H, W) -> logits (N, vocab, H / 8, W / 8)."""

    def __init__(self, config: DalleEncoderConfig = DalleEncoderConfig()) -> None:
        super().__init__()
        self.config = config
        n_blk, h = config.n_blk_per_group, config.n_hid
        n_layers = GROUP_COUNT * n_blk
        widths = [h, h, 2 * h, 4 * h, 8 * h]  # input width, then the four groups
        groups: list[tuple[str, nn.Module]] = []
        for g in range(GROUP_COUNT):
            blocks = [
                ResidualBlock(widths[g] if i == 0 else widths[g + 1], widths[g + 1], n_layers, ENCODER_KERNELS)
                for i in range(n_blk)
            ]
            pool = ("pool", nn.MaxPool2d(kernel_size=2)) if g < GROUP_COUNT - 1 else None
            groups.append((f"group_{g + 1}", _group(blocks, pool)))
        self.blocks = nn.Sequential(OrderedDict([
            ("input", Conv2d(config.input_channels, h, 7)),
            *groups,
            ("output", nn.Sequential(OrderedDict([
                ("relu", nn.ReLU()),
                ("conv", Conv2d(8 * h, config.vocab_size, 1, float32_only=True)),
            ]))),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)

    def rescored_tokens(self, x: torch.Tensor, top_k: int = 4, chunk: int = 4096) -> torch.Tensor:
        """argmax tokens for the fast path: the logit layer runs in reduced precision, then
        the `top_k` candidates of every position are re-scored in fp32 from the same features.

        Gives the tokens of an fp32 logit layer unless its winner is outside the reduced-
        precision top k, at ~1/1000 of that layer's cost (k dot products instead of 8192).
        """
        for name, module in self.blocks.named_children():
            if name != "output":
                x = module(x)
        features = self.blocks.output.relu(x)
        conv = self.blocks.output.conv
        logits = F.conv2d(features, conv.w, conv.b)  # under autocast: bf16 / fp16
        candidates = logits.topk(top_k, dim=1).indices  # (N, k, h, w)
        n, c, h, w = features.shape
        with torch.autocast(features.device.type, enabled=False):
            feats = features.float().permute(0, 2, 3, 1).reshape(-1, c)  # (P, C)
            cands = candidates.permute(0, 2, 3, 1).reshape(-1, top_k)  # (P, k)
            weight, bias = conv.w[:, :, 0, 0].float(), conv.b.float()
            best = torch.empty(len(cands), dtype=torch.int64, device=feats.device)
            for start in range(0, len(cands), chunk):  # bounds the (p, k, C) gathered weights
                part = cands[start:start + chunk]
                scores = torch.bmm(weight[part], feats[start:start + chunk, :, None])[..., 0] + bias[part]
                best[start:start + chunk] = part.gather(1, scores.argmax(1, keepdim=True))[:, 0]
        return best.view(n, h, w)

    def stages(self, x: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, output) after each entry of `blocks` (input, group_1..4, output)."""
        for name, module in self.blocks.named_children():
            x = module(x)
            yield name, x


class DalleDecoder(nn.Module):
    """One-hot codes float (N, vocab, h, w) -> (N, 2 * C, 8h, 8w); the first C channels are
    pixel logits (`reconstruct`), the others are unused logit-Laplace scales."""

    def __init__(self, config: DalleDecoderConfig = DalleDecoderConfig()) -> None:
        super().__init__()
        self.config = config
        n_blk, h = config.n_blk_per_group, config.n_hid
        n_layers = GROUP_COUNT * n_blk
        widths = [config.n_init, 8 * h, 4 * h, 2 * h, h]
        groups: list[tuple[str, nn.Module]] = []
        for g in range(GROUP_COUNT):
            blocks = [
                ResidualBlock(widths[g] if i == 0 else widths[g + 1], widths[g + 1], n_layers, DECODER_KERNELS)
                for i in range(n_blk)
            ]
            up = ("upsample", nn.Upsample(scale_factor=2, mode="nearest")) if g < GROUP_COUNT - 1 else None
            groups.append((f"group_{g + 1}", _group(blocks, up)))
        self.blocks = nn.Sequential(OrderedDict([
            ("input", Conv2d(config.vocab_size, config.n_init, 1, float32_only=True)),
            *groups,
            ("output", nn.Sequential(OrderedDict([
                ("relu", nn.ReLU()),
                ("conv", Conv2d(h, 2 * config.output_channels, 1)),
            ]))),
        ]))

    def forward(self, onehot: torch.Tensor) -> torch.Tensor:
        return self.blocks(onehot)

    def forward_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Same as `forward(one_hot(ids))` but the input 1x1 conv becomes a column lookup:
        a one-hot input selects one weight column exactly, so nothing is lost and the
        (N, vocab, h, w) one-hot map is never built."""
        conv = self.blocks.input
        table = conv.w[:, :, 0, 0].t().float()  # (vocab, n_init)
        x = (table[ids] + conv.b.float()).permute(0, 3, 1, 2)  # channels-last strides
        if not torch.is_autocast_enabled(x.device.type):
            x = x.contiguous()  # the exact fp32 path uses the reference's memory layout
        for name, module in self.blocks.named_children():
            if name != "input":
                x = module(x)
        return x

    def stages(self, onehot: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        x = onehot
        for name, module in self.blocks.named_children():
            x = module(x)
            yield name, x


def reconstruct(decoder_output: torch.Tensor, channels: int = 3) -> torch.Tensor:
    """Decoder output -> pixels in [0, 1]: unmap_pixels(sigmoid(first `channels` channels))."""
    return unmap_pixels(torch.sigmoid(decoder_output[:, :channels].float()))


# --------------------------------------------------------------------------- tokenizer


def _state_problems(module: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    """What keeps `state` from loading strictly into `module` (empty when it fits)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: {tuple(state[k].shape)} != expected {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''} ({len(missing)})")
    if unexpected:
        problems.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''} ({len(unexpected)})")
    if shapes:
        problems.append("wrong shapes " + "; ".join(shapes[:5]))
    return problems


# How each hyper-parameter shows in the shape of a tensor every DALL-E half has:
# (field, tensor name, dimension, factor): shape[dimension] == factor * field.
_SHAPE_FIELDS = {
    "encoder": (("n_hid", "blocks.input.w", 0, 1), ("input_channels", "blocks.input.w", 1, 1),
                ("vocab_size", "blocks.output.conv.w", 0, 1)),
    "decoder": (("n_init", "blocks.input.w", 0, 1), ("vocab_size", "blocks.input.w", 1, 1),
                ("n_hid", "blocks.output.conv.w", 1, 1), ("output_channels", "blocks.output.conv.w", 0, 2)),
}


def _fit_problems(half: str, config: DalleEncoderConfig | DalleDecoderConfig,
                  state: Mapping[str, torch.Tensor], label: str) -> list[str]:
    """What keeps `state` from loading into the `half` network of `config`, found without
    allocating that network (empty when it fits).

    The hyper-parameters come from the same untrusted file as the weights; the networks they
    describe are allocated only once every shape matches a tensor that really is in the file
    (whose size bounds theirs), so a crafted `n_hid` or block count cannot make us allocate
    terabytes. `label` prefixes the fields in messages ("encoder." or "the pickled Encoder's ").
    """
    problems = []
    for name, key, dim, factor in _SHAPE_FIELDS[half]:
        value, tensor = getattr(config, name), state.get(key)
        if isinstance(tensor, torch.Tensor) and tensor.ndim == 4 and tensor.shape[dim] != factor * value:
            implied = tensor.shape[dim] / factor
            implied_text = str(int(implied)) if implied == int(implied) else f"{implied:g}"
            problems.append(f"{label}{name} = {value} does not match the stored weights: {key} has shape "
                            f"{tuple(tensor.shape)}, which means {name} = {implied_text}")
    prefix = "blocks.group_1.block_"
    blocks = {k[len(prefix):].split(".", 1)[0] for k in state if k.startswith(prefix)}
    if config.n_blk_per_group != len(blocks):
        # Checked before building even a shape-only network: the block count sets how many
        # modules Python creates, and the file's tensors bound it only once it matches them.
        problems.append(f"{label}n_blk_per_group = {config.n_blk_per_group} does not match the stored "
                        f"weights, which hold {len(blocks)} blocks in group_1")
        return problems
    network = meta_model(lambda: DalleEncoder(config) if half == "encoder" else DalleDecoder(config))
    return problems + _state_problems(network, state)


def _check_fit(config: DalleConfig, parts: tuple[tuple[Mapping[str, torch.Tensor], str, str], ...]) -> None:
    """A TokenizerError listing every mismatch of `parts` (as for _build_checked) with `config`,
    found without allocating the networks; the tensors may be meta tensors (read_meta_tensors)."""
    errors = []
    halves = zip(("encoder", "decoder"), (config.encoder, config.decoder), parts)
    for half, half_config, (state, where, label) in halves:
        if problems := _fit_problems(half, half_config, state, label):
            errors.append(f"{where}: " + ", ".join(problems))
    if errors:
        raise TokenizerError("weights do not fit the DALL-E architecture: " + "; ".join(errors))


def _read_weights(path: Path, read: Callable[[str], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """`read(path)` (the header's meta tensors, or the tensors), its errors a TokenizerError."""
    return read_safetensors(path, read, TokenizerError,
                            missing=f"not found; the folder needs {WEIGHTS_FILE} beside {TOKENIZER_JSON}")


def _folder_parts(tensors: Mapping[str, torch.Tensor], path: Path) -> tuple[tuple[dict, str, str], ...]:
    """The (state, where, label) of each half of a tokenizer folder's `tensors` (for _check_fit)."""
    stray = [k for k in tensors if not k.startswith(("encoder.", "decoder."))]
    if stray:
        raise TokenizerError(f"{path}: unexpected tensors {stray[:5]}; expected encoder.* and decoder.*")
    return tuple(({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, f"{path} ({half})", prefix)
                 for half, prefix in (("encoder", "encoder."), ("decoder", "decoder.")))


def _build_checked(config: DalleConfig, parts: tuple[tuple[Mapping[str, torch.Tensor], str, str], ...]
                   ) -> tuple[DalleEncoder, DalleDecoder]:
    """The two networks of `config` loaded with the weights of `parts` = ((encoder state, where,
    label), (decoder state, where, label)); every mismatch of both parts is reported at once,
    with the file it came from, before the real networks are allocated."""
    _check_fit(config, parts)
    encoder, decoder = DalleEncoder(config.encoder), DalleDecoder(config.decoder)
    for module, (state, _, _) in zip((encoder, decoder), parts):
        module.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return encoder, decoder


def _as_frames(frames: np.ndarray | torch.Tensor, downsample: int) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if not isinstance(tensor, torch.Tensor):
        raise TokenizerError(f"frames: expected a uint8 array or tensor, got {type(frames).__name__}")
    if tensor.dtype != torch.uint8 or tensor.ndim != 4 or tensor.shape[-1] != 3:
        raise TokenizerError(f"frames: expected uint8 (N, H, W, 3), got {tensor.dtype} {tuple(tensor.shape)}")
    h, w = tensor.shape[1:3]
    if h % downsample or w % downsample or h == 0 or w == 0:
        raise TokenizerError(f"frames: height and width must be positive multiples of {downsample}, got {h}x{w}")
    return tensor


class DalleTokenizer(FrameTokenizer):
    """DALL-E's dVAE as a frame tokenizer: uint8 frames <-> int64 code ids (1/8 the side).

    `precision`: "fp32" reproduces the reference exactly; "bf16" (CPU or CUDA) and "fp16"
    (CUDA only) run the convolutions under autocast with channels-last activations; "auto"
    picks bf16, or fp16 on a GPU without native bf16 (V100, T4). `logit_precision` says how the fast path treats the encoder's logit layer,
    whose argmax over 8192 codes is sensitive to rounding:
    "fp32" runs it in fp32 as the original does on CUDA (~20% of the bf16 encoder's CPU time);
    "rescore" (default) runs it in bf16 and re-scores each position's top 4 codes in fp32,
    which gives the same tokens as "fp32" unless the fp32 winner is outside the bf16 top 4;
    "bf16" takes the bf16 argmax (fastest, fewest tokens equal to fp32; see docs/benchmarks.md).
    `logits()` in the fast path returns the logit layer at `logit_precision` ("rescore": bf16).
    """

    kind = "dalle"
    downsample = 8

    def __init__(
        self,
        config: DalleConfig,
        encoder: DalleEncoder | None = None,
        decoder: DalleDecoder | None = None,
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 16,
        precision: Precision = "auto",
        logit_precision: Literal["fp32", "rescore", "bf16"] = "rescore",
        rescore_top_k: int = 4,
    ) -> None:
        config.validate()
        self.config = config
        self.codebook_size = config.encoder.vocab_size
        self.device = torch.device(device)
        if precision == "fp16" and self.device.type == "cpu":
            raise TokenizerError("precision='fp16' is for CUDA only; on CPU use 'bf16' (fp16 is ~200x slower there)")
        if precision not in ("auto", "fp32", "bf16", "fp16"):
            raise TokenizerError(f"precision {precision!r}: expected one of auto, fp32, bf16, fp16")
        if batch_size < 1:
            raise TokenizerError(f"batch_size {batch_size}: expected >= 1")
        self.precision: Precision = precision
        self.batch_size = batch_size
        self.encoder = (encoder or DalleEncoder(config.encoder)).to(self.device).eval().requires_grad_(False)
        self.decoder = (decoder or DalleDecoder(config.decoder)).to(self.device).eval().requires_grad_(False)
        if logit_precision not in ("fp32", "rescore", "bf16"):
            raise TokenizerError(f"logit_precision {logit_precision!r}: expected fp32, rescore or bf16")
        if rescore_top_k < 1:
            raise TokenizerError(f"rescore_top_k {rescore_top_k}: expected >= 1")
        self.logit_precision = logit_precision
        self.rescore_top_k = min(rescore_top_k, self.codebook_size)
        self.encoder.blocks.output.conv.float32_only = logit_precision == "fp32"
        if self._fast_dtype() is not None:
            # oneDNN / cuDNN run reduced-precision convolutions fastest on NHWC tensors.
            self.encoder.to(memory_format=torch.channels_last)
            self.decoder.to(memory_format=torch.channels_last)
        self._tokenizer_id: str | None = None

    # -- construction ---------------------------------------------------------

    @classmethod
    def from_state_dicts(
        cls,
        config: DalleConfig,
        encoder_state: Mapping[str, torch.Tensor],
        decoder_state: Mapping[str, torch.Tensor],
        where: str = "state dict",
        **kwargs,
    ) -> "DalleTokenizer":
        """Build from the two state dicts (original names), loaded strictly."""
        config.validate(where)
        encoder, decoder = _build_checked(config, ((encoder_state, f"{where} (encoder)", "encoder."),
                                                   (decoder_state, f"{where} (decoder)", "decoder.")))
        return cls(config, encoder, decoder, **kwargs)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu", **kwargs) -> "DalleTokenizer":
        """Load a folder written by `save_pretrained` / `vimpac convert-dalle`."""
        from safetensors.torch import load_file

        folder = Path(folder)
        config_path, weights_path = folder / TOKENIZER_JSON, folder / WEIGHTS_FILE
        try:
            meta = parse_json(config_path.read_text())
        except FileNotFoundError:
            raise TokenizerError(f"{config_path}: not found; make the folder with `vimpac convert-dalle`") from None
        except ValueError as exc:  # not JSON, not UTF-8, nested too deeply
            raise TokenizerError(f"{config_path}: not valid JSON: {exc}") from None
        if not isinstance(meta, dict) or meta.get("kind") != "dalle":
            raise TokenizerError(f"{config_path}: expected \"kind\": \"dalle\", got {meta.get('kind') if isinstance(meta, dict) else meta!r}")
        try:
            config = from_dict(DalleConfig, meta.get("architecture", {}), where=f"{config_path}:architecture")
            config.validate(where=f"{config_path}:architecture")
        except ConfigError as exc:
            raise TokenizerError(str(exc)) from None
        # The header first: tensors that do not fit the architecture are refused before load_file
        # reads them all.
        _check_fit(config, _folder_parts(_read_weights(weights_path, read_meta_tensors), weights_path))
        encoder_state, decoder_state = (state for state, _, _ in
                                        _folder_parts(_read_weights(weights_path, load_file), weights_path))
        tokenizer = cls.from_state_dicts(config, encoder_state, decoder_state, where=str(weights_path),
                                         device=device, **kwargs)
        recorded = meta.get("tokenizer_id")
        if recorded is not None and recorded != tokenizer.tokenizer_id:
            raise TokenizerError(f"{folder}: weights hash to {tokenizer.tokenizer_id} but {TOKENIZER_JSON} records "
                                 f"{recorded}; the folder was modified or mixed up")
        return tokenizer

    def save_pretrained(self, folder: str | Path, source: Mapping[str, str] | None = None) -> None:
        """Write model.safetensors then tokenizer.json (atomically; the JSON marks completion)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        tensors = {**{f"encoder.{k}": v for k, v in self.encoder.state_dict().items()},
                   **{f"decoder.{k}": v for k, v in self.decoder.state_dict().items()}}
        tensors = {k: v.detach().float().contiguous().cpu() for k, v in tensors.items()}
        with atomic_path(folder / WEIGHTS_FILE, suffix=".safetensors") as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt", "kind": "dalle"})
        meta = {
            "kind": self.kind,
            "format_version": FORMAT_VERSION,
            "codebook_size": self.codebook_size,
            "downsample": self.downsample,
            "architecture": to_dict(self.config),
            "tokenizer_id": self.tokenizer_id,
        }
        if source:
            meta["source"] = dict(source)
        atomic_write_json(folder / TOKENIZER_JSON, meta)

    @property
    def tokenizer_id(self) -> str:
        if self._tokenizer_id is None:
            digest = hashlib.sha256()
            digest.update(json.dumps({"kind": self.kind, **to_dict(self.config)}, sort_keys=True).encode())
            for prefix, module in (("encoder.", self.encoder), ("decoder.", self.decoder)):
                for name, tensor in sorted(module.state_dict().items()):
                    array = tensor.detach().float().contiguous().cpu().numpy()
                    digest.update(f"{prefix}{name}:{array.shape}".encode())
                    digest.update(array.tobytes())
            self._tokenizer_id = f"dalle-{digest.hexdigest()[:16]}"
        return self._tokenizer_id

    # -- inference ------------------------------------------------------------

    def _fast_dtype(self) -> torch.dtype | None:
        """The autocast dtype, or None for plain fp32."""
        if self.precision == "fp32":
            return None
        if self.precision == "fp16":
            return torch.float16
        if self.precision == "auto" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported(
                including_emulation=False):
            return torch.float16  # GPUs before Ampere (V100, T4) only emulate bf16, slowly; fp16 as OpenAI's code
        return torch.bfloat16

    def _context(self) -> contextlib.AbstractContextManager:
        dtype = self._fast_dtype()
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def _batches(self, n: int) -> Iterator[slice]:
        for start in range(0, n, self.batch_size):
            yield slice(start, min(start + self.batch_size, n))

    def logits(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Encoder logits (N, vocab, H / 8, W / 8) as float32 on CPU."""
        frames = _as_frames(frames, self.downsample)
        if len(frames) == 0:
            return torch.empty(0, self.codebook_size, frames.shape[1] // 8, frames.shape[2] // 8)
        return torch.cat(list(self._encode_batches(frames, want_logits=True)))

    def encode(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 frames (N, H, W, 3) -> int64 ids (N, H / 8, W / 8) on CPU."""
        frames = _as_frames(frames, self.downsample)
        if len(frames) == 0:
            h, w = frames.shape[1] // 8, frames.shape[2] // 8
            return torch.empty(0, h, w, dtype=torch.int64)
        return torch.cat(list(self._encode_batches(frames, want_logits=False)))

    def _encode_batches(self, frames: np.ndarray | torch.Tensor, want_logits: bool) -> Iterator[torch.Tensor]:
        frames = _as_frames(frames, self.downsample)
        fast = self._fast_dtype() is not None
        with torch.inference_mode(), self._context():
            for part in self._batches(len(frames)):
                # NHWC uint8 -> NCHW float; the permuted view already has channels-last strides.
                x = frames[part].to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
                x = x.contiguous(memory_format=torch.channels_last) if fast else x.contiguous()
                x = map_pixels(x / 255.0)
                if fast and not want_logits and self.logit_precision == "rescore":
                    yield self.encoder.rescored_tokens(x, self.rescore_top_k).cpu()
                    continue
                logits = self.encoder(x)
                yield (logits.float() if want_logits else logits.argmax(dim=1)).cpu()

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """int ids (N, h, w) -> uint8 frames (N, 8h, 8w, 3) on CPU."""
        ids = torch.as_tensor(ids)
        if ids.ndim != 3 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise TokenizerError(f"ids: expected integer (N, h, w), got {ids.dtype} {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.codebook_size):
            raise TokenizerError(f"ids: values must lie in [0, {self.codebook_size}), got "
                                 f"[{int(ids.min())}, {int(ids.max())}]")
        channels = self.config.decoder.output_channels
        outputs = []
        with torch.inference_mode(), self._context():
            for part in self._batches(len(ids)):
                out = self.decoder.forward_ids(ids[part].to(self.device, torch.int64))
                pixels = reconstruct(out, channels)
                outputs.append((pixels * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu())
        if not outputs:
            return torch.empty(0, ids.shape[1] * 8, ids.shape[2] * 8, channels, dtype=torch.uint8)
        return torch.cat(outputs)


# --------------------------------------------------------------------------- official pickles

# The classes a released `encoder.pkl` / `decoder.pkl` may name; each becomes an inert
# `PickledModule` stand-in (see vimpac/tokenizer/safe_pickle.py). Both files admit all of them
# so that swapped arguments get "holds a Decoder, expected an Encoder", not a refusal.
_DALL_E_CLASSES = (
    "dall_e.encoder.Encoder", "dall_e.encoder.EncoderBlock",
    "dall_e.decoder.Decoder", "dall_e.decoder.DecoderBlock",
    "dall_e.utils.Conv2d",
)


def _read_official(path: Path, top_class: str, fields: tuple[str, ...]):
    from vimpac.tokenizer.safe_pickle import STANDARD_NN_MODULES, PickledModule, load_module_pickle

    module = load_module_pickle(path, (*_DALL_E_CLASSES, *STANDARD_NN_MODULES))
    if not isinstance(module, PickledModule) or module.qualname != top_class:
        found = module.qualname if isinstance(module, PickledModule) else type(module).__name__
        raise TokenizerError(f"{path}: holds {found}, expected a pickled {top_class}")
    values = {}
    for name in fields:
        value = module.attribute(name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise TokenizerError(f"{path}: attribute {name!r} of the pickled {top_class} is {value!r}, expected an int")
        values[name] = value
    try:
        state = module.state_dict()
    except TokenizerError as exc:
        raise TokenizerError(f"{path}: {exc}") from None
    return values, state


def load_official_pickles(encoder_pkl: str | Path, decoder_pkl: str | Path, **kwargs) -> DalleTokenizer:
    """Read OpenAI's `encoder.pkl` / `decoder.pkl` without executing them (restricted
    unpickling) into a `DalleTokenizer`; the architecture comes from the pickled attributes
    and the weights are loaded strictly."""
    encoder_pkl, decoder_pkl = Path(encoder_pkl), Path(decoder_pkl)
    enc_fields, enc_state = _read_official(encoder_pkl, "dall_e.encoder.Encoder",
                                           ("n_hid", "n_blk_per_group", "input_channels", "vocab_size"))
    dec_fields, dec_state = _read_official(decoder_pkl, "dall_e.decoder.Decoder",
                                           ("n_init", "n_hid", "n_blk_per_group", "output_channels", "vocab_size"))
    config = DalleConfig(DalleEncoderConfig(**enc_fields), DalleDecoderConfig(**dec_fields))
    try:
        config.validate(where=f"{encoder_pkl} + {decoder_pkl}")
    except ConfigError as exc:
        raise TokenizerError(str(exc)) from None
    encoder, decoder = _build_checked(config, ((enc_state, str(encoder_pkl), "the pickled Encoder's "),
                                               (dec_state, str(decoder_pkl), "the pickled Decoder's ")))
    return DalleTokenizer(config, encoder, decoder, **kwargs)


def convert_official_pickles(encoder_pkl: str | Path, decoder_pkl: str | Path, out_dir: str | Path,
                             overwrite: bool = False) -> DalleTokenizer:
    """`vimpac convert-dalle`: the official pickles -> OUT_DIR/{tokenizer.json, model.safetensors}.

    OUT_DIR must be new or empty. With `overwrite`, a folder that holds a tokenizer (a
    tokenizer.json) is replaced as a whole, so nothing of the old tokenizer (a train_report.json,
    a demo's DONE.json) stays behind to describe the new one; any other non-empty folder is
    refused even then, as it may not be ours to delete.
    """
    replace = check_output_folder(out_dir, overwrite)
    tokenizer = load_official_pickles(encoder_pkl, decoder_pkl, precision="fp32")
    source = {"encoder": Path(encoder_pkl).name, "decoder": Path(decoder_pkl).name}
    write_folder(out_dir, replace, lambda folder: tokenizer.save_pretrained(folder, source=source))
    return tokenizer
