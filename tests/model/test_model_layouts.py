"""Every attention layout and both LayerNorm placements: shapes, [PAD] key masking, CLS
averaging (against a naive per-row reference), gradient flow, checkpointing, bf16."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from model_testlib import random_tokens, tiny_config
from vimpac.model import ModelError, VimpacBackbone, VimpacForPretraining, parse_layout
from vimpac.model.attention import AttentionBlock

LAYOUTS = ("T,H|W", "T,H,W", "T,HxW", "TxHxW", "H|W,T", "T", "T|H|W|HxW")
PAPER = ("T,H|W", "T,H,W", "T,HxW", "TxHxW")
# Every layout post-LN; pre-LN (also with halved widths, which crashes in the original) on the
# paper's four; halved attention post-LN (Large-Half) on the default layout.
CASES = ([(layout, dict(pre_ln=False)) for layout in LAYOUTS]
         + [(layout, dict(pre_ln=True)) for layout in PAPER]
         + [(layout, dict(pre_ln=True, halve_att=True, halve_mlp=True)) for layout in PAPER]
         + [("T,H|W", dict(halve_att=True, halve_mlp=True))])


def _pad_last_frame(cfg, tokens: torch.Tensor) -> torch.Tensor:
    tokens = tokens.clone()
    tokens[1, -1] = cfg.vocab.pad_id
    return tokens


@pytest.mark.parametrize(("layout", "variant"), CASES,
                         ids=[f"{layout}-{'-'.join(k for k, on in v.items() if on) or 'post_ln'}" for layout, v in CASES])
def test_shapes_gradients_and_pad_masking(layout, variant):
    torch.manual_seed(0)
    cfg = tiny_config(layout=layout, **variant)
    model = VimpacForPretraining(cfg)
    tokens = _pad_last_frame(cfg, random_tokens(cfg))
    predict = torch.zeros_like(tokens, dtype=torch.bool)
    predict[:, 0, :2, :2] = True
    out = model(tokens, predict)
    assert out.cls_hidden.shape == (2, cfg.dim)
    assert out.hiddens.shape == (2, cfg.max_frames, cfg.height, cfg.width, cfg.dim)
    assert out.mlm_logits.shape == (8, cfg.num_rows)
    assert out.cls_projection.shape == (2, cfg.cls_head_out)

    # Gradient flow: every parameter receives a non-zero gradient.
    loss = F.cross_entropy(out.mlm_logits, tokens[predict]) + out.cls_projection.square().mean()
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"no gradient reaches {dead}"

    # [PAD] keys are never attended to: changing what the PAD positions carry (their frame's
    # positional row, which only PAD tokens use here) leaves CLS and every other token unchanged...
    model.eval()
    backbone = model.backbone
    with torch.no_grad():
        cls_a, hid_a = backbone(tokens)
        # (a random vector: a constant shift would vanish in the post-LN input LayerNorm)
        backbone.positional_embedding.temporal_pos_embedding[-1] += torch.randn(cfg.dim)
        cls_b, hid_b = backbone(tokens)
    torch.testing.assert_close(cls_b[1], cls_a[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hid_b[1, :-1], hid_a[1, :-1], atol=1e-5, rtol=1e-5)
    # ... while the PAD positions themselves (queries are not masked) and sample 0 do change.
    assert not torch.allclose(hid_b[1, -1], hid_a[1, -1], atol=1e-3)
    assert not torch.allclose(hid_b[0], hid_a[0], atol=1e-3)


def reference_block(block: AttentionBlock, cls: torch.Tensor, x: torch.Tensor, pad: torch.Tensor):
    """A deliberately naive attention block: Python loops over every row of every axis set,
    explicit softmax, CLS slot in front of each row, CLS contexts averaged over rows before the
    output projection. Written from the conventions, independent of the fused code path."""
    B, T, H, W, D = x.shape
    cls_in, x_in = (block.LayerNorm(cls), block.LayerNorm(x)) if block.pre_ln else (cls, x)
    cls_ctx_parts, x_ctx_parts = [], []
    for attn in block.attentions:
        lin = attn.attention
        heads, hd = attn.heads, attn.head_dim
        axes = attn.spec.axes
        rows_axes = [a for a in (1, 2, 3) if a not in axes]
        sizes = (T, H, W)
        x_ctx = torch.zeros(B, T, H, W, heads * hd)
        cls_ctx = torch.zeros(B, heads * hd)
        for b in range(B):
            row_ranges = [range(sizes[a - 1]) for a in rows_axes]
            n_rows = 0
            for row in itertools.product(*row_ranges):
                positions = []
                for seq in itertools.product(*[range(sizes[a - 1]) for a in axes]):
                    idx = [0, 0, 0]
                    for a, v in zip(rows_axes, row):
                        idx[a - 1] = v
                    for a, v in zip(axes, seq):
                        idx[a - 1] = v
                    positions.append(tuple(idx))
                seq_in = torch.stack([cls_in[b]] + [x_in[(b, *p)] for p in positions])       # (1+N, D)
                keep = torch.tensor([True] + [not bool(pad[(b, *p)]) for p in positions])
                q = lin.query(seq_in).view(-1, heads, hd).transpose(0, 1)
                k = lin.key(seq_in).view(-1, heads, hd).transpose(0, 1)
                v = lin.value(seq_in).view(-1, heads, hd).transpose(0, 1)
                scores = q @ k.transpose(-1, -2) / hd ** 0.5
                scores = scores.masked_fill(~keep, float("-inf"))
                ctx = (scores.softmax(-1) @ v).transpose(0, 1).reshape(-1, heads * hd)   # (1+N, w)
                cls_ctx[b] += ctx[0]
                n_rows += 1
                for i, p in enumerate(positions):
                    x_ctx[(b, *p)] = ctx[1 + i]
            cls_ctx[b] /= n_rows
        cls_ctx_parts.append(cls_ctx)
        x_ctx_parts.append(x_ctx)
    cls_ctx, x_ctx = torch.cat(cls_ctx_parts, -1), torch.cat(x_ctx_parts, -1)
    if block.pre_ln:
        # The authors' pre-activation code adds to the normalized input ("normalized").
        cls_res, x_res = (cls_in, x_in) if block.normalized_residual else (cls, x)
        return cls_res + block.dense(cls_ctx), x_res + block.dense(x_ctx)
    return block.output.LayerNorm(cls + block.output.dense(cls_ctx)), block.output.LayerNorm(x + block.output.dense(x_ctx))


@pytest.mark.parametrize("layout", ["T,H|W", "T,HxW", "TxHxW", "H|W|TxW"])
@pytest.mark.parametrize("pre_ln, residual", [(False, "input"), (True, "input"), (True, "normalized")])
def test_fused_blocks_match_naive_reference(layout, pre_ln, residual):
    torch.manual_seed(1)
    cfg = tiny_config(layout=layout, pre_ln=pre_ln, pre_ln_residual=residual, heads=6, dim=48, max_frames=2,
                      height=3, width=4)
    backbone = VimpacBackbone(cfg).eval()
    for p in backbone.parameters():  # non-trivial biases / norms so a dropped term shows
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 2, 3, 4, cfg.dim)
    cls = torch.randn(2, cfg.dim)
    pad = torch.zeros(2, 2, 3, 4, dtype=torch.bool)
    pad[1, 1] = True          # a whole frame of sample 1
    pad[0, 0, 2, 1:] = True   # part of a row of sample 0
    with torch.no_grad():
        for block in backbone.transformer.resblocks[0].attention_blocks:
            ours = block(cls, x, pad)
            ref = reference_block(block, cls, x, pad)
            torch.testing.assert_close(ours[0], ref[0], atol=2e-5, rtol=2e-5)
            torch.testing.assert_close(ours[1], ref[1], atol=2e-5, rtol=2e-5)
            cls, x = ours


def test_gradient_checkpointing_gives_the_same_gradients():
    cfg = tiny_config()
    torch.manual_seed(0)
    plain = VimpacForPretraining(cfg)
    ckpt = VimpacForPretraining(tiny_config(gradient_checkpointing=True))
    ckpt.load_state_dict(plain.state_dict())
    tokens = _pad_last_frame(cfg, random_tokens(cfg))
    grads = []
    for model in (plain, ckpt):
        out = model(tokens, tokens < 8)
        (out.mlm_logits.logsumexp(-1).mean() + out.cls_projection.sum()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("layout", ["T,H|W", "TxHxW"])
def test_bf16_autocast_runs_and_stays_close(layout):
    cfg = tiny_config(layout=layout)
    torch.manual_seed(0)
    model = VimpacForPretraining(cfg).eval()
    tokens = _pad_last_frame(cfg, random_tokens(cfg))
    with torch.no_grad():
        ref = model.backbone(tokens)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model.backbone(tokens)[0]
    assert torch.isfinite(low).all()
    assert (low.float() - ref).abs().max() < 0.1   # bf16 has ~3 significant digits; LN outputs are O(1)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(tokens, tokens < 8)
        loss = out.mlm_logits.float().logsumexp(-1).mean()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_fewer_frames_than_the_tables_and_too_many_frames():
    cfg = tiny_config(max_frames=4)
    model = VimpacBackbone(cfg).eval()
    cls, hiddens = model(random_tokens(cfg, frames=2))
    assert hiddens.shape[1] == 2
    with pytest.raises(ModelError, match="exceed the positional tables"):
        model(random_tokens(tiny_config(max_frames=5)))
    with pytest.raises(ModelError, match=r"token ids must lie in \[0, 37\)"):
        model(torch.full((1, 2, 4, 4), 37))
    with pytest.raises(ModelError, match="integer tokens"):
        model(torch.zeros(1, 2, 4, 4))


def test_layout_grammar():
    assert [b.name for b in parse_layout("t, h|w")] == ["T", "H|W"]
    assert [b.name for b in parse_layout("T,WxH")] == ["T", "HxW"]
    for bad in ("", "T,,H", "T,Q", "TxT", "H|"):
        with pytest.raises(ModelError):
            parse_layout(bad)
    with pytest.raises(ModelError, match="splits heads=3"):
        tiny_config(heads=3, dim=48).validate()
    with pytest.raises(ModelError, match="'pre_ln_residual': expected one of"):
        tiny_config(pre_ln=True, pre_ln_residual="raw").validate()
    with pytest.raises(ModelError, match="applies to pre-LN models only"):
        tiny_config(pre_ln=False, pre_ln_residual="normalized").validate()
