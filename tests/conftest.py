import os

import torch

# Without a GPU, Triton kernels run under triton's interpreter on CPU tensors. triton reads the
# flag when it is first imported (its own library kernels are decorated then), so it is set here,
# before any test module imports triton (torch.profiler and torch.utils.flop_counter do).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: exercises a CUDA code path (run by `bench.py selftest` on a GPU)")


def rand_qkv(batch, heads, n, head_dim, seed=0, dtype=torch.float32, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, heads, n, head_dim)
    return tuple((torch.randn(shape, generator=gen) * (scale if i == 0 else 1.0)).to(dtype) for i in range(3))


@pytest.fixture
def qkv_factory():
    return rand_qkv


@pytest.fixture
def scratch_registry():
    """Restore the method registry after a test that registers or replaces methods."""
    from attnbench import registry

    registry._load_builtins()
    saved = dict(registry._REGISTRY)
    yield registry
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)

# A failure of attnbench's own measuring code raises in tests instead of becoming a
# harness_error row (tests that check those rows unset it).
os.environ.setdefault("ATTNBENCH_STRICT", "1")

# Sweeps in tests run inline unless a test asks for another executor (a worker process costs a
# torch import); the executor tests pass --executor explicitly.
os.environ.setdefault("ATTNBENCH_EXECUTOR", "inline")
