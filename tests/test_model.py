"""DeiT-style models: parameter and MAC counts against DeiT's published sizes and closed forms,
the AnchorFormer projection design, and the model command's rows."""
import json

import pytest
import torch

from attnbench.cli import main
from attnbench.models import ARCHS, ViT, count_params, vit_config
from attnbench.models.audit import ModelConfig, build_model, fvcore_model_macs
from attnbench.results import read_rows


def test_deit_small_matches_its_published_size():
    """DeiT-S: 22.0-22.1 M parameters and 4.6 +- 0.1 GMACs (fvcore) at 224."""
    model = build_model(ModelConfig("deit-small", "vanilla-math", timing=False))
    assert 22.0e6 <= count_params(model) <= 22.1e6
    macs = fvcore_model_macs(model, torch.randn(1, 3, 224, 224))["macs_fvcore"]
    assert abs(macs / 1e9 - 4.6) <= 0.1


def expected_params(arch: str, m: int | None, shared: bool = False, tokens: int = 197) -> int:
    """Closed form: patch conv, cls + positions, 12 blocks, final norm and a 1000-way head."""
    dim, heads = ARCHS[arch]["dim"], ARCHS[arch]["heads"]
    if m is None:
        attn = dim * 3 * dim + 3 * dim                           # qkv with bias
    else:
        attn = dim * 2 * dim + m * (dim // heads) * (1 if shared else heads)  # kv, no bias; anchors
    block = 2 * 2 * dim + attn + dim * dim + dim + 2 * (dim * 4 * dim) + 4 * dim + dim
    return 3 * 256 * dim + dim + dim + tokens * dim + 12 * block + 2 * dim + dim * 1000 + 1000


@pytest.mark.parametrize("shared", [False, True], ids=["per-head", "shared"])
def test_anchor_model_has_a_bias_free_kv_projection_and_no_query(shared):
    model = ViT(vit_config("deit-tiny", "anchor", m=30, shared=shared))
    attn = model.blocks[0].attn
    assert not hasattr(attn, "qkv") and attn.kv.bias is None and attn.kv.out_features == 2 * 192
    assert attn.core.anchors.shape == ((30, 64) if shared else (3, 30, 64))
    assert count_params(model) == expected_params("deit-tiny", 30, shared)


def test_vanilla_model_params_match_closed_form():
    assert count_params(ViT(vit_config("deit-tiny", "vanilla-sdpa"))) == expected_params("deit-tiny", None)


def expected_macs(dim: int, heads: int, img: int, m: int) -> int:
    """Anchor model, one image: patch conv, per block kv/proj/MLP linears + 3·N·m·d attention, head."""
    patches = (img // 16) ** 2
    n = patches + 1
    block = n * dim * 2 * dim + n * dim * dim + 2 * n * dim * 4 * dim + 3 * n * m * dim
    return patches * dim * 3 * 256 + 12 * block + dim * 1000


def test_model_command_writes_valid_rows(tmp_path, capsys):
    out = tmp_path / "models"
    code = main(["model", "--arch", "deit-tiny", "--attention", "anchor", "--img", "64", "--m", "8",
                 "--batch", "2", "--iters", "1", "--device", "cpu", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    (row,) = read_rows(out / "rows.jsonl")
    assert row["status"] == "ok" and row["kind"] == "model" and row["method"] == "anchor" and row["n"] == 17
    assert row["param_count"] == expected_params("deit-tiny", 8, tokens=17)
    assert row["macs_fvcore"] == row["flops_torch"] // 2 == expected_macs(192, 3, 64, 8)
    assert row["images_per_s"] > 0 and row["batch"] == 2 and row["timing"]["iters"] == 1
    assert row["env"]["torch"] and row["run_id"]
    assert json.loads((out / "runs.jsonl").read_text())["argv"][0] == "bench.py"


def test_budget_larger_than_tokens_is_an_unsupported_row(tmp_path, capsys):
    out = tmp_path / "models"
    code = main(["model", "--arch", "deit-tiny", "--attention", "anchor", "--img", "32", "--m", "30",
                 "--no-timing", "--out", str(out)])
    assert code == 0
    (row,) = read_rows(out / "rows.jsonl")
    assert row["status"] == "unsupported" and "exceeds the token count" in row["message"]


@pytest.mark.parametrize("args,needle", [(["--arch", "deit-huge"], "unknown arch"),
                                         (["--attention", "nope"], "unknown method"),
                                         (["--img", "100"], "multiple of the patch size"),
                                         (["--m", "0"], "--m must be positive"),
                                         (["--param", "shared"], "expected METHOD.KEY=VALUE")],
                         ids=["arch", "attention", "img", "m", "param"])
def test_bad_model_input_is_one_line(args, needle, capsys, tmp_path):
    code = main(["model"] + args + ["--no-timing", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err


def test_grid_methods_see_the_patch_grid_and_cls_attends_exactly(scratch_registry):
    """A grid method gets the patch tokens on their grid; the cls token gets exact attention."""
    from attnbench.methods.base import AttentionMethod
    from attnbench.reference import softmax_attention as exact_attention

    seen = []

    @scratch_registry.register("grid-probe", family="test", needs_grid=True)
    class GridProbe(AttentionMethod):
        def forward(self, q, k, v, grid=None):
            seen.append((q.shape[2], grid))
            return torch.zeros_like(v)

        def macs(self, batch, n, grid=None):
            return 0

    model = ViT(vit_config("deit-tiny", "grid-probe", img=48)).eval()
    attn = model.blocks[0].attn
    q, k, v = (torch.randn(2, 3, 10, 64, dtype=torch.float64) for _ in range(3))
    out = attn.attend(q, k, v)
    assert seen[-1] == (9, (3, 3))
    torch.testing.assert_close(out[:, :, :1], exact_attention(q[:, :, :1], k, v))
    assert (out[:, :, 1:] == 0).all()
    model(torch.randn(1, 3, 48, 48))
    assert seen[-1] == (9, (3, 3)) and len(seen) == 1 + 12
