"""The heap policy of timing processes: applied at run time and through a child's environment."""
import subprocess
import sys
import textwrap

import pytest

from attnbench.measure import allocator

glibc = pytest.mark.skipif(allocator.policy() is None, reason="glibc only")

# Prints how many blocks glibc serves with mmap before and after one 8 MiB malloc (mallinfo2).
PROBE = textwrap.dedent("""
    import ctypes, ctypes.util, sys
    class Info(ctypes.Structure):
        _fields_ = [(f, ctypes.c_size_t) for f in
                    "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.mallinfo2.restype = Info
    libc.malloc.restype = ctypes.c_void_p
    if sys.argv[1] == "apply":
        sys.path.insert(0, sys.argv[2])
        from attnbench.measure.allocator import steady_allocator
        assert steady_allocator() is not None
    before = libc.mallinfo2().hblks
    block = libc.malloc(8 << 20)
    print(libc.mallinfo2().hblks - before)
""")


def mmapped_blocks(mode: str, env=None) -> int:
    root = str(allocator.__file__).rsplit("/attnbench/", 1)[0]
    out = subprocess.run([sys.executable, "-c", PROBE, mode, root], env=env, capture_output=True, text=True,
                         check=True)
    return int(out.stdout.strip())


@glibc
def test_plain_process_serves_8mib_with_mmap():
    """The premise: by default an 8 MiB block is mmapped (and so faulted in again after each free)."""
    assert mmapped_blocks("plain") == 1


@glibc
def test_steady_allocator_keeps_8mib_in_heap():
    assert mmapped_blocks("apply") == 0


@glibc
def test_steady_env_keeps_8mib_in_heap_of_a_child():
    assert mmapped_blocks("plain", env=allocator.steady_env()) == 0
    assert mmapped_blocks("plain", env=allocator.steady_env({"PATH": "/usr/bin"})) == 0


def test_steady_env_keeps_the_given_environment():
    env = allocator.steady_env({"A": "1"})
    assert env["A"] == "1" and int(env["MALLOC_MMAP_THRESHOLD_"]) == allocator.MMAP_THRESHOLD


@glibc
def test_env_records_the_policy():
    from attnbench.measure.env import collect_env

    assert collect_env("cpu")["allocator"] == allocator.POLICY


def test_ab_workers_start_with_the_policy(monkeypatch, tmp_path):
    """Both sides of an A/B check, whatever their revision's code, get the policy at start-up."""
    from attnbench.check import ab

    seen = {}

    class FakePopen:
        def __init__(self, cmd, env=None, **kw):
            seen["env"] = env

    monkeypatch.setattr(ab.subprocess, "Popen", FakePopen)
    ab.Worker(tmp_path, tmp_path / "w.log")
    assert seen["env"]["MALLOC_MMAP_THRESHOLD_"] == str(allocator.MMAP_THRESHOLD)
    assert seen["env"]["MALLOC_TRIM_THRESHOLD_"] == str(allocator.TRIM_THRESHOLD)
