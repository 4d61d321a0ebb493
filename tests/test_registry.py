import textwrap

import pytest
import torch

import attnbench
from attnbench import registry
from attnbench.methods.base import AttentionMethod


def test_unknown_name_lists_known_names():
    with pytest.raises(KeyError) as err:
        attnbench.create("no-such-attention", heads=2, head_dim=8)
    assert "vanilla-math" in str(err.value) and "anchor" in str(err.value)


def test_duplicate_registration_raises_unless_replace(scratch_registry):
    with pytest.raises(ValueError, match="already registered"):
        @attnbench.register("vanilla-math", family="vanilla")
        class Dup(AttentionMethod):
            pass

    @attnbench.register("vanilla-math", family="vanilla", replace=True)
    class Replacement(AttentionMethod):
        def forward(self, q, k, v, grid=None):
            return v

    out = attnbench.create("vanilla-math", heads=1, head_dim=4)
    assert isinstance(out, Replacement)


def test_register_rejects_non_modules(scratch_registry):
    with pytest.raises(TypeError):
        attnbench.register("plain", family="x")(object)


def test_list_methods_reports_availability_with_reason():
    rows = {m["name"]: m for m in attnbench.list_methods("cpu")}
    assert {"vanilla-math", "vanilla-sdpa", "vanilla-xformers", "anchor", "anchor-select"} <= set(rows)
    assert rows["anchor"]["budget"] == "m" and rows["anchor"]["uses_query"] is False
    xf = rows["vanilla-xformers"]
    assert xf["available"] is False and xf["reason"]  # cuda-only: never available on cpu


@pytest.mark.parametrize("name", ["vanilla-math", "vanilla-sdpa", "anchor", "anchor-select"])
def test_create_returns_module_with_shape_contract(name, qkv_factory):
    mod = attnbench.create(name, heads=3, head_dim=16, **({"m": 5} if "anchor" in name else {}))
    assert isinstance(mod, torch.nn.Module)
    q, k, v = qkv_factory(2, 3, 37, 16)
    out = mod(q, k, v)
    assert out.shape == (2, 3, 37, 16) and torch.isfinite(out).all()


def test_unsupported_reason_is_a_sentence():
    mod = attnbench.create("anchor", heads=2, head_dim=8, m=50)
    assert "exceeds" in mod.unsupported_reason("cpu", "float32", 20, 8)
    assert mod.unsupported_reason("cpu", "float32", 64, 8) is None
    xf = attnbench.create("vanilla-xformers", heads=2, head_dim=8)
    assert xf.unsupported_reason("cpu", "float32", 64, 8)


def test_plugin_file_registers_method(tmp_path, scratch_registry):
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text(textwrap.dedent("""
        import attnbench
        from attnbench.methods.base import AttentionMethod

        @attnbench.register("plugin-identity", family="test")
        class Identity(AttentionMethod):
            def forward(self, q, k, v, grid=None):
                return v
            def macs(self, batch, n, grid=None):
                return 0
    """))
    registry.load_plugin(str(plugin))
    assert "plugin-identity" in {m["name"] for m in attnbench.list_methods()}


def test_broken_plugin_raises_plugin_error(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(registry.PluginError, match="boom"):
        registry.load_plugin(str(bad))
    with pytest.raises(registry.PluginError, match="does not exist"):
        registry.load_plugin(str(tmp_path / "missing.py"))
    with pytest.raises(registry.PluginError):
        registry.load_plugin("no_such_module_for_attnbench")
