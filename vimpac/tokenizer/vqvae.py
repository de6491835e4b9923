"""Our own small trainable VQ-VAE frame tokenizer (kind "vqvae").

For users without DALL-E's dVAE weights and for the embedded demo. The architecture is a plain
convolutional VQ-VAE (van den Oord et al. 2017) with the codebook tricks that make a small one
train in minutes on a CPU without collapsing onto a handful of codes:

* three stride-2 stages (8x downsampling, as DALL-E's dVAE: 128 px -> 16x16 tokens);
* a low-dimensional (default 32) l2-normalised code space: nearest-code search is a cosine
  similarity, so codes cannot "win" by norm and more of them stay in use;
* codebook learned by exponential moving averages of the encoder outputs assigned to each code
  (no gradient), with Laplace-smoothed cluster sizes so rare codes do not divide by zero;
* dead-code restart: a code that has not been chosen for `dead_code_steps` training steps is
  re-initialised from a random encoder output of the current batch;
* straight-through gradient from decoder to encoder, plus a commitment loss (beta = 0.25).

`VQVAE` is the torch module (training forward, losses); `VQVAETokenizer` wraps it behind the
`FrameTokenizer` interface (uint8 frames in, int64 ids out; save / load; `tokenizer_id`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vimpac.config import ConfigError, from_dict, to_dict
from vimpac.io import atomic_path, atomic_write_json, parse_json
from vimpac.tokenizer.base import FrameTokenizer, TokenizerError
from vimpac.weight_shapes import numbered_blocks, read_shapes, shape_problems, summarize

KIND = "vqvae"
FORMAT_VERSION = 1
CONFIG_FILE = "tokenizer.json"
WEIGHTS_FILE = "model.safetensors"
NUM_STAGES = 3  # three stride-2 stages: 8x downsampling


@dataclass(frozen=True)
class VQVAEConfig:
    """Architecture and codebook settings of the VQ-VAE (all saved in tokenizer.json)."""

    width: int = 64
    """Channels of the first stage; later stages multiply it by `channel_mult`."""
    channel_mult: tuple[int, ...] = (1, 2, 2)
    """Per-stage width multipliers, one per stride-2 stage (exactly three: 8x downsampling)."""
    num_res_blocks: int = 1
    """Residual blocks per stage (and at the bottleneck)."""
    codebook_size: int = 512
    code_dim: int = 32
    normalize_codes: bool = True
    """l2-normalise encoder outputs and codes (cosine lookup); helps codebook usage."""
    ema_decay: float = 0.99
    ema_epsilon: float = 1e-5
    """Laplace smoothing of the EMA cluster sizes."""
    commitment_beta: float = 0.25
    dead_code_steps: int = 20
    """Restart a code not chosen for this many training steps; 0 disables restarts."""

    def validate(self) -> "VQVAEConfig":
        problems = []
        if len(self.channel_mult) != NUM_STAGES:
            problems.append(f"channel_mult must have {NUM_STAGES} entries (8x downsampling), got {list(self.channel_mult)}")
        for name in ("width", "num_res_blocks", "codebook_size", "code_dim"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if any(m < 1 for m in self.channel_mult):
            problems.append(f"channel_mult entries must be >= 1, got {list(self.channel_mult)}")
        if not 0.0 <= self.ema_decay < 1.0:
            problems.append(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.ema_epsilon < 0 or self.commitment_beta < 0 or self.dead_code_steps < 0:
            problems.append("ema_epsilon, commitment_beta and dead_code_steps must be >= 0")
        if self.codebook_size > 65534:  # the ids and [PAD] (codebook_size + 1) in a uint16 token store
            problems.append(f"codebook_size must fit uint16 token stores (<= 65534), got {self.codebook_size}")
        if problems:
            raise ConfigError("VQVAEConfig: " + "; ".join(problems))
        return self


VQVAE_PRESETS: dict[str, VQVAEConfig] = {
    # The CPU demo: 0.49M parameters, > 22 dB held-out PSNR on the synthetic benchmark (64 px)
    # after ~2 minutes of training on a 2-core CPU (docs/tokenizers.md).
    "tiny": VQVAEConfig(width=32, channel_mult=(1, 2, 2), num_res_blocks=1, codebook_size=512, code_dim=32),
    # More capacity for real clips; still CPU-trainable but slower.
    "small": VQVAEConfig(width=64, channel_mult=(1, 2, 2), num_res_blocks=2, codebook_size=1024, code_dim=32),
}


# --------------------------------------------------------------------------------------------
# Networks


class ResBlock(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x)))): the original VQ-VAE block, no normalisation layers
    (they cost time on CPU and are not needed at this depth)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class Encoder(nn.Module):
    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        widths = [cfg.width * m for m in cfg.channel_mult]
        self.stem = nn.Conv2d(3, widths[0], 3, padding=1)
        stages = []
        in_ch = widths[0]
        for out_ch in widths:
            blocks: list[nn.Module] = [ResBlock(in_ch) for _ in range(cfg.num_res_blocks)]
            blocks.append(nn.Conv2d(in_ch, out_ch, 4, stride=2, padding=1))  # halves H and W
            stages.append(nn.Sequential(*blocks))
            in_ch = out_ch
        self.stages = nn.Sequential(*stages)
        self.mid = nn.Sequential(*[ResBlock(in_ch) for _ in range(cfg.num_res_blocks)])
        self.to_code = nn.Conv2d(in_ch, cfg.code_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.stages(self.stem(x)))
        return self.to_code(F.relu(h))


class Decoder(nn.Module):
    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        widths = [cfg.width * m for m in cfg.channel_mult][::-1]
        self.from_code = nn.Conv2d(cfg.code_dim, widths[0], 3, padding=1)
        self.mid = nn.Sequential(*[ResBlock(widths[0]) for _ in range(cfg.num_res_blocks)])
        stages = []
        in_ch = widths[0]
        for out_ch in widths[1:] + [widths[-1]]:
            blocks: list[nn.Module] = [ResBlock(in_ch) for _ in range(cfg.num_res_blocks)]
            # Transposed 4x4 stride-2 conv doubles H and W (mirror of the encoder's downsampling).
            blocks.append(nn.ConvTranspose2d(in_ch, out_ch, 4, stride=2, padding=1))
            stages.append(nn.Sequential(*blocks))
            in_ch = out_ch
        self.stages = nn.Sequential(*stages)
        self.to_rgb = nn.Conv2d(in_ch, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.stages(self.mid(self.from_code(z)))
        return self.to_rgb(F.relu(h))


class QuantizerOutput(NamedTuple):
    quantized: torch.Tensor
    """(B, D, h, w) codes with a straight-through gradient to the encoder output."""
    ids: torch.Tensor
    """(B, h, w) int64 code ids."""
    commitment_loss: torch.Tensor
    """beta * mean ||z_e - sg(code)||^2 (scalar)."""
    perplexity: torch.Tensor
    """exp(entropy) of this batch's code histogram (scalar)."""


class EMAQuantizer(nn.Module):
    """Nearest-code vector quantiser whose codebook follows EMAs of its assigned inputs.

    With decay g, per code i and a batch where n_i inputs with sum s_i chose code i:
        N_i <- g N_i + (1 - g) n_i            (cluster size)
        m_i <- g m_i + (1 - g) s_i            (sum of assigned inputs)
        N~_i = (N_i + eps) / (sum N + K eps) * sum N      (Laplace smoothing)
        e_i  = m_i / N~_i                     (then l2-normalised if `normalize_codes`)
    The codebook gets no gradient; the encoder is pulled towards it by the commitment loss.
    """

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        self.codebook_size = cfg.codebook_size
        self.code_dim = cfg.code_dim
        self.normalize = cfg.normalize_codes
        self.decay = cfg.ema_decay
        self.epsilon = cfg.ema_epsilon
        self.beta = cfg.commitment_beta
        self.dead_code_steps = cfg.dead_code_steps
        codebook = torch.randn(cfg.codebook_size, cfg.code_dim)
        if self.normalize:
            codebook = F.normalize(codebook, dim=1)
        self.register_buffer("codebook", codebook)
        self.register_buffer("cluster_size", torch.zeros(cfg.codebook_size))
        self.register_buffer("embed_sum", codebook.clone())
        # Training step at which each code was last chosen (for dead-code restart).
        self.register_buffer("last_used", torch.zeros(cfg.codebook_size, dtype=torch.int64))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        # 0 until the codebook has been seeded from the first training batch.
        self.register_buffer("initialized", torch.zeros((), dtype=torch.int64))

    def _prepare(self, flat: torch.Tensor) -> torch.Tensor:
        flat = flat.float()
        return F.normalize(flat, dim=1) if self.normalize else flat

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Ids of the nearest codes for (M, D) prepared vectors, computed in fp32."""
        with torch.autocast(device_type=flat.device.type, enabled=False):
            codebook = self.codebook.float()
            if self.normalize:  # unit vectors: nearest == highest cosine similarity
                return (flat @ codebook.t()).argmax(dim=1)
            dist = (codebook * codebook).sum(1)[None, :] - 2.0 * (flat @ codebook.t())
            return dist.argmin(dim=1)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Code ids (B, h, w) -> code vectors (B, D, h, w)."""
        return self.codebook[ids].permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        b, d, h, w = z.shape
        flat = self._prepare(z.permute(0, 2, 3, 1).reshape(-1, d))
        if self.training:
            self._maybe_initialize(flat.detach())
        ids = self.nearest(flat.detach())
        codes = self.codebook[ids]
        if self.training:
            self.update(flat.detach(), ids)
        commitment = self.beta * F.mse_loss(flat, codes.detach())
        # Straight-through: the forward value is the code, the gradient goes to the encoder output.
        quantized = flat + (codes - flat).detach()
        quantized = quantized.view(b, h, w, d).permute(0, 3, 1, 2)
        counts = torch.bincount(ids, minlength=self.codebook_size).float()
        probs = counts / counts.sum()
        perplexity = torch.exp(-(probs * torch.log(probs.clamp_min(1e-12))).sum())
        return QuantizerOutput(quantized, ids.view(b, h, w), commitment, perplexity)

    @torch.no_grad()
    def _maybe_initialize(self, flat: torch.Tensor) -> None:
        # Seeding the codes with real encoder outputs (instead of random vectors far from the
        # data) is the first defence against collapse.
        if int(self.initialized) == 1:
            return
        seeds = self._random_rows(flat, self.codebook_size)
        self.codebook.copy_(seeds)
        self.embed_sum.copy_(seeds)
        self.cluster_size.fill_(1.0)
        self.last_used.fill_(int(self.step))
        self.initialized.fill_(1)

    def _random_rows(self, flat: torch.Tensor, count: int) -> torch.Tensor:
        """`count` random rows of `flat`; sampled with replacement plus a little noise when the
        batch has fewer rows than needed, so restarted codes do not start out identical."""
        if flat.shape[0] >= count:
            rows = flat[torch.randperm(flat.shape[0], device=flat.device)[:count]]
        else:
            rows = flat[torch.randint(flat.shape[0], (count,), device=flat.device)]
            rows = rows + 0.01 * rows.std() * torch.randn_like(rows)
        return F.normalize(rows, dim=1) if self.normalize else rows

    @torch.no_grad()
    def update(self, flat: torch.Tensor, ids: torch.Tensor) -> None:
        """One EMA step of the codebook from prepared inputs `flat` (M, D) and their ids (M,),
        followed by dead-code restart. Called by `forward` in training mode."""
        counts = torch.bincount(ids, minlength=self.codebook_size).to(flat.dtype)
        sums = torch.zeros_like(self.embed_sum).index_add_(0, ids, flat)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1.0 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1.0 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.epsilon) / (total + self.codebook_size * self.epsilon) * total
        codebook = self.embed_sum / smoothed.unsqueeze(1)
        self.codebook.copy_(F.normalize(codebook, dim=1) if self.normalize else codebook)

        self.step.add_(1)
        self.last_used[counts > 0] = self.step
        if self.dead_code_steps > 0:
            dead = (self.step - self.last_used) >= self.dead_code_steps
            num_dead = int(dead.sum())
            if num_dead:
                seeds = self._random_rows(flat, num_dead)
                self.codebook[dead] = seeds
                self.embed_sum[dead] = seeds
                self.cluster_size[dead] = 1.0
                self.last_used[dead] = self.step


class VQVAEOutput(NamedTuple):
    reconstruction: torch.Tensor
    """(B, 3, H, W) in the model's pixel range [-1, 1] (not clamped)."""
    ids: torch.Tensor
    recon_loss: torch.Tensor
    commitment_loss: torch.Tensor
    perplexity: torch.Tensor

    @property
    def loss(self) -> torch.Tensor:
        return self.recon_loss + self.commitment_loss


class VQVAE(nn.Module):
    """Encoder -> EMA quantiser -> decoder. Pixels enter as floats in [-1, 1], NCHW."""

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg.validate()
        self.encoder = Encoder(cfg)
        self.quantizer = EMAQuantizer(cfg)
        self.decoder = Decoder(cfg)
        # Unit-length codes have components of size ~1/sqrt(D); scaling them back to ~1 gives the
        # decoder inputs of the scale its default init expects (it learns much faster early on).
        self.code_scale = math.sqrt(cfg.code_dim) if cfg.normalize_codes else 1.0

    def forward(self, pixels: torch.Tensor) -> VQVAEOutput:
        z = self.encoder(pixels)
        q = self.quantizer(z)
        recon = self.decoder((q.quantized * self.code_scale).to(z.dtype))
        recon_loss = F.mse_loss(recon.float(), pixels.float())
        return VQVAEOutput(recon, q.ids, recon_loss, q.commitment_loss, q.perplexity)

    def encode_ids(self, pixels: torch.Tensor) -> torch.Tensor:
        z = self.encoder(pixels)
        b, d, h, w = z.shape
        flat = self.quantizer._prepare(z.permute(0, 2, 3, 1).reshape(-1, d))
        return self.quantizer.nearest(flat).view(b, h, w)

    def decode_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.quantizer.lookup(ids) * self.code_scale)


def frames_to_pixels(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    return frames.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def pixels_to_frames(pixels: torch.Tensor) -> torch.Tensor:
    """float (N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3), rounded and clamped."""
    return pixels.float().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


# --------------------------------------------------------------------------------------------
# The FrameTokenizer


class VQVAETokenizer(FrameTokenizer):
    """Our VQ-VAE behind the FrameTokenizer interface.

    Inference runs batched under `torch.inference_mode`, channels_last, and with bf16 autocast
    on CPU when `bf16=True` (the default; never fp16 on CPU, which is ~200x slower there). The
    nearest-code search always runs in fp32.
    """

    kind = KIND
    downsample = 2**NUM_STAGES

    def __init__(self, model: VQVAE, device: str | torch.device = "cpu", bf16: bool = True, batch_size: int = 256) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.model.to(memory_format=torch.channels_last)
        self.config = model.cfg
        self.codebook_size = model.cfg.codebook_size
        self.bf16 = bf16
        self.batch_size = batch_size
        self._tokenizer_id: str | None = None

    @classmethod
    def from_config(cls, cfg: VQVAEConfig, device: str | torch.device = "cpu", **kwargs) -> "VQVAETokenizer":
        return cls(VQVAE(cfg), device=device, **kwargs)

    def _autocast(self):
        # bf16 autocast exists on CPU and CUDA; elsewhere (or when disabled) run plain fp32.
        enabled = self.bf16 and self.device.type in ("cpu", "cuda")
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _check_frames(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(frames, np.ndarray):
            frames = torch.from_numpy(np.ascontiguousarray(frames))
        if not isinstance(frames, torch.Tensor):
            raise TypeError(f"frames must be a numpy array or torch tensor, got {type(frames).__name__}")
        if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be uint8 (N, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
        h, w = frames.shape[1:3]
        if h % self.downsample or w % self.downsample:
            raise ValueError(f"frame height and width must be divisible by {self.downsample}, got {h}x{w}")
        return frames

    def encode(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 frames (N, H, W, 3) -> int64 ids (N, H/8, W/8), on the CPU."""
        frames = self._check_frames(frames)
        out = []
        with torch.inference_mode(), self._autocast():
            for start in range(0, frames.shape[0], self.batch_size):
                chunk = frames[start : start + self.batch_size].to(self.device)
                pixels = frames_to_pixels(chunk).contiguous(memory_format=torch.channels_last)
                out.append(self.model.encode_ids(pixels).cpu())
        if not out:
            h, w = frames.shape[1] // self.downsample, frames.shape[2] // self.downsample
            return torch.zeros((0, h, w), dtype=torch.int64)
        return torch.cat(out)

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """int ids (N, h, w) -> uint8 frames (N, 8h, 8w, 3), on the CPU."""
        ids = torch.as_tensor(ids)
        if ids.ndim != 3 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise ValueError(f"ids must be an integer tensor (N, h, w), got {ids.dtype} {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.codebook_size):
            raise ValueError(f"ids must be in [0, {self.codebook_size}), got range [{int(ids.min())}, {int(ids.max())}]")
        ids = ids.long()
        out = []
        with torch.inference_mode(), self._autocast():
            for start in range(0, ids.shape[0], self.batch_size):
                pixels = self.model.decode_ids(ids[start : start + self.batch_size].to(self.device))
                out.append(pixels_to_frames(pixels).cpu())
        if not out:
            return torch.zeros((0, ids.shape[1] * self.downsample, ids.shape[2] * self.downsample, 3), dtype=torch.uint8)
        return torch.cat(out)

    def reconstruct(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """decode(encode(frames)): what the tokens keep of the frames."""
        return self.decode(self.encode(frames))

    # ---- persistence

    def config_dict(self) -> dict:
        return {"kind": KIND, "format_version": FORMAT_VERSION, "downsample": self.downsample, "config": to_dict(self.config)}

    def save_pretrained(self, folder: str | Path) -> None:
        """Write tokenizer.json and model.safetensors into `folder` (each atomically)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: _plain_tensor(v) for k, v in self.model.state_dict().items()}
        with atomic_path(folder / WEIGHTS_FILE, suffix=".safetensors") as tmp:
            save_file(tensors, str(tmp), metadata={"kind": KIND, "format_version": str(FORMAT_VERSION)})
        # The config goes last: a folder with tokenizer.json is a complete tokenizer.
        atomic_write_json(folder / CONFIG_FILE, {**self.config_dict(), "tokenizer_id": self.tokenizer_id})

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu", **kwargs) -> "VQVAETokenizer":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(folder)
        config_path = folder / CONFIG_FILE
        try:
            meta = parse_json(config_path.read_text())
        except FileNotFoundError:
            raise TokenizerError(f"{config_path}: not found") from None
        except ValueError as exc:  # not JSON, not UTF-8, nested too deeply
            raise TokenizerError(f"{config_path}: not valid JSON: {exc}") from None
        if not isinstance(meta, dict) or meta.get("kind") != KIND:
            raise TokenizerError(f"{config_path}: expected \"kind\": \"{KIND}\", got {meta.get('kind') if isinstance(meta, dict) else meta!r}")
        if meta.get("format_version") != FORMAT_VERSION:
            raise TokenizerError(f"{config_path}: unsupported format_version {meta.get('format_version')!r}; expected {FORMAT_VERSION}")
        try:
            cfg = from_dict(VQVAEConfig, meta.get("config"), where=f"{config_path}:config").validate()
        except ConfigError as exc:
            raise TokenizerError(str(exc)) from None
        weights_path = folder / WEIGHTS_FILE
        try:
            shapes = read_shapes(weights_path)
        except FileNotFoundError:
            raise TokenizerError(f"{weights_path}: not found") from None
        except (SafetensorError, OSError) as exc:
            raise TokenizerError(f"{weights_path}: cannot read safetensors: {exc}") from None
        # Before anything is built: the sizes in tokenizer.json must be those of the stored tensors.
        if problems := _size_problems(cfg, shapes):
            raise TokenizerError(f"{weights_path}: weights do not match the config in {config_path}: "
                                 + summarize(problems))
        model = VQVAE(cfg)
        expected = model.state_dict()
        missing = sorted(set(expected) - set(shapes))
        unexpected = sorted(set(shapes) - set(expected))
        wrong = sorted(k for k in set(expected) & set(shapes) if tuple(expected[k].shape) != shapes[k])
        if missing or unexpected or wrong:
            raise TokenizerError(
                f"{weights_path}: weights do not match the config in {config_path}: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shape {wrong[:5]}"
            )
        try:
            tensors = load_file(str(weights_path))
        except (SafetensorError, OSError) as exc:
            raise TokenizerError(f"{weights_path}: cannot read safetensors: {exc}") from None
        model.load_state_dict(tensors)
        tokenizer = cls(model, device=device, **kwargs)
        recorded = meta.get("tokenizer_id")
        if recorded is not None and recorded != tokenizer.tokenizer_id:
            # Weights edited or swapped after saving: a store made with the recorded id must not
            # be read with these weights.
            raise TokenizerError(
                f"{weights_path}: weights hash to {tokenizer.tokenizer_id}, but {config_path} records {recorded}"
            )
        return tokenizer

    @property
    def tokenizer_id(self) -> str:
        """'vqvae-' + 16 hex digits of sha256 over the config JSON and every tensor's bytes.

        Cached: the weights of a tokenizer in use are not expected to change. Training code
        builds a fresh VQVAETokenizer after training, so the id reflects the final weights.
        """
        if self._tokenizer_id is None:
            digest = hashlib.sha256(json.dumps(self.config_dict(), sort_keys=True).encode())
            for name, tensor in sorted(self.model.state_dict().items()):
                if name in _TRAINING_ONLY_BUFFERS:
                    continue
                digest.update(name.encode())
                digest.update(_plain_tensor(tensor).numpy().tobytes())
            self._tokenizer_id = f"{KIND}-{digest.hexdigest()[:16]}"
        return self._tokenizer_id

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def _size_problems(cfg: VQVAEConfig, shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """What in `cfg` differs from the tensor shapes of a weights file, checked without building
    the network: the stage widths (stem and each downsampling conv), the residual blocks per
    stage, the code dimension and the codebook size. Once these match, the network `cfg`
    describes is no larger than the file (the decoder mirrors the encoder)."""
    widths = [cfg.width * m for m in cfg.channel_mult]
    expected = {"encoder.stem.weight": (widths[0], 3, 3, 3)}
    in_ch = widths[0]
    for i, out_ch in enumerate(widths):
        # Each stage is num_res_blocks ResBlocks, then the stride-2 conv (see Encoder).
        expected[f"encoder.stages.{i}.{cfg.num_res_blocks}.weight"] = (out_ch, in_ch, 4, 4)
        in_ch = out_ch
    expected["encoder.to_code.weight"] = (cfg.code_dim, in_ch, 1, 1)
    expected["quantizer.codebook"] = (cfg.codebook_size, cfg.code_dim)
    problems = shape_problems(expected, shapes)
    blocks = numbered_blocks(shapes, "encoder.mid.")
    if len(blocks) != cfg.num_res_blocks:
        problems.append(f"num_res_blocks: config says {cfg.num_res_blocks}, file has {len(blocks)} in encoder.mid")
    return problems


def _plain_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A detached CPU copy with standard row-major strides. `.contiguous()` is not enough for
    channels_last weights with size-1 dims (1x1 convs): they count as contiguous while keeping
    odd strides, which safetensors and byte views reject."""
    return tensor.detach().cpu().clone(memory_format=torch.contiguous_format)


# EMA state that does not change what encode/decode produce; left out of tokenizer_id so that the
# id names the function frames -> tokens, not the optimiser history.
_TRAINING_ONLY_BUFFERS = frozenset(
    f"quantizer.{name}" for name in ("cluster_size", "embed_sum", "last_used", "step", "initialized")
)


def psnr_db(mse_uint8: float) -> float:
    """PSNR in dB of a mean squared error measured on 0..255 pixels."""
    return float("inf") if mse_uint8 <= 0 else 10.0 * math.log10(255.0**2 / mse_uint8)


def replace_config(cfg: VQVAEConfig, **changes) -> VQVAEConfig:
    return dataclasses.replace(cfg, **changes).validate()
