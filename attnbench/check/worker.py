"""A timing worker for ``check --base``: one process measuring the methods of one source tree.

Run as ``python -c BOOT ROOT worker.py`` (see ``ab.start_worker``): ``sys.path[0]`` is ROOT, so
``import attnbench`` gives that tree's package, the working tree or a revision's worktree. This
file imports nothing else from attnbench: it relies only on what every revision has,
``attnbench.registry.create(name, heads=, head_dim=, **params)``, ``registry.get_info(name).budget``,
``registry.load_plugin(spec)`` and the module call ``module(q, k, v, grid=...)``.

Protocol: one JSON line per message. The parent sends the job (entries, settings, the inputs
file, where to save the outputs); the inputs file holds per n the speed inputs and the
correctness inputs, and per key the state to load (``load_state``). The worker builds every
entry, loads that state, runs it once on the correctness inputs, saves those outputs and answers
``{"ready": {key: {"status", "message", "number", "state"}}}`` ("state": "shared" or why not).
Then each ``{"time": key, "number": k}`` is answered with ``{"ms": milliseconds per call}`` for
k calls in a row on the speed inputs, until ``{"quit": true}``. On CUDA a block of k calls is
timed with CUDA events, the L2 cache flushed before each block (outside the events), as the
sweep times CUDA (``attnbench/measure/timing.py``). Anything the methods print goes to stderr.
"""
import json
import math
import os
import sys
import time
from pathlib import Path


def protocol_streams():
    """(input, output) for messages; fd 1 is pointed at stderr so that prints cannot corrupt them."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    return sys.stdin, out


def build(registry, entry, heads, head_dim, seed):
    """The module of ``entry`` ({method, m, params}), built after seeding torch."""
    import torch

    info = registry.get_info(entry["method"])
    params = dict(entry.get("params") or {})
    if getattr(info, "budget", None) and entry.get("m") is not None:
        params[info.budget] = entry["m"]
    torch.manual_seed(seed)
    return registry.create(entry["method"], heads=heads, head_dim=head_dim, **params)


def load_state(module, state, device):
    """Give ``module`` the state another process built (``check/outputs.py: module_state``): its
    state dict (strictly: the same names and shapes; a buffer registered as None, set by fitting,
    is given its tensor), then the tensors held as plain attributes."""
    sd = dict(state["state_dict"])
    for name in list(sd):
        path, _, attr = name.rpartition(".")
        sub = module.get_submodule(path) if path else module
        if attr in sub._buffers and sub._buffers[attr] is None:
            sub._buffers[attr] = sd[name].clone().to(device)
    module.load_state_dict(sd)
    for name, value in state["attrs"].items():
        path, _, attr = name.rpartition(".")
        setattr(module.get_submodule(path) if path else module, attr, value.to(device))


def _first_line(exc):
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]


def prepare(registry, entry, job, inputs):
    """(status, message, call, output, state) of one entry; a failure is a status, not a crash.
    ``state``: "shared" when the parent's state was loaded, else why not."""
    import torch

    s = job["settings"]
    try:
        registry.get_info(entry["method"])
    except KeyError:
        return "skipped", f"{entry['method']} is not registered", None, None, None
    q, k, v, grid = inputs["speed"][entry["n"]]                   # (B, H, N, d) each
    cq, ck, cv, cgrid = inputs["check"][entry["n"]]               # the correctness inputs
    try:
        module = build(registry, entry, s["heads"], s["head_dim"], s["seed"]).to(s["device"]).eval()
        why = getattr(module, "unsupported_reason", None)
        reason = why(s["device"], s["dtype"], entry["n"], s["head_dim"]) if why else None
        if reason:
            return "skipped", str(reason), None, None, None
        state = "no state was saved for it"
        if entry["key"] in inputs["states"]:
            try:
                load_state(module, inputs["states"][entry["key"]], s["device"])
                state = "shared"
            except Exception as exc:  # another layout of state: outputs cannot be compared
                state = f"could not load the shared state: {_first_line(exc)}"

        def call():
            with torch.no_grad():
                return module(q, k, v, grid=grid)
        with torch.no_grad():
            out = module(cq, ck, cv, grid=cgrid)                  # (B, H, N, d)
        call()
    except Exception as exc:  # the method's failure is its result
        return "error", _first_line(exc), None, None, None
    return "ok", None, call, out.detach().cpu(), state


class CpuClock:
    """Wall time of a block of calls."""

    def block(self, call, number):
        t0 = time.perf_counter()
        for _ in range(number):
            call()
        return (time.perf_counter() - t0) * 1e3


class CudaClock:
    """CUDA events around a block of calls; the L2 cache flushed before it, outside the events."""

    def __init__(self, flush_bytes=256 * 2**20):
        import torch

        self.torch = torch
        self.flush = torch.empty(flush_bytes, dtype=torch.int8, device="cuda")
        self.start = torch.cuda.Event(enable_timing=True)
        self.end = torch.cuda.Event(enable_timing=True)

    def block(self, call, number):
        self.flush.zero_()
        self.start.record()
        for _ in range(number):
            call()
        self.end.record()
        self.end.synchronize()
        return self.start.elapsed_time(self.end)


def timed(call, number, clock):
    """Milliseconds per call over ``number`` calls in a row."""
    return clock.block(call, number) / number


def calls_per_part(call, part_ms, clock):
    """Warm up, then the number of calls that fills ``part_ms`` milliseconds."""
    call()
    return max(1, math.ceil(part_ms / max(timed(call, 1, clock), 1e-3)))


def serve(job, inp, out):
    import torch

    s = job["settings"]
    torch.set_num_threads(s["threads"])
    import attnbench.registry as registry
    for spec in job.get("plugins", ()):
        registry.load_plugin(spec)
    inputs = torch.load(job["inputs"])
    cuda = s["device"] == "cuda"
    if cuda:
        for part in ("speed", "check"):
            inputs[part] = {n: tuple(t.to("cuda") if torch.is_tensor(t) else t for t in x)
                            for n, x in inputs[part].items()}
    clock = CudaClock() if cuda else CpuClock()
    calls, outputs, ready = {}, {}, {}
    for entry in job["entries"]:
        status, message, call, result, state = prepare(registry, entry, job, inputs)
        number = calls_per_part(call, s["block_ms"] / s["parts"], clock) if call else 0
        calls[entry["key"]], outputs[entry["key"]] = call, result
        ready[entry["key"]] = {"status": status, "message": message, "number": number, "state": state}
    torch.save({k: o for k, o in outputs.items() if o is not None}, job["outputs"])
    package = str(Path(sys.modules["attnbench"].__file__).resolve().parent)
    out.write(json.dumps({"ready": ready, "package": package}) + "\n")
    for line in inp:
        cmd = json.loads(line)
        if cmd.get("quit"):
            return
        out.write(json.dumps({"ms": timed(calls[cmd["time"]], cmd["number"], clock)}) + "\n")


def main():
    inp, out = protocol_streams()
    job = json.loads(inp.readline())
    serve(job, inp, out)


if __name__ == "__main__":
    main()
