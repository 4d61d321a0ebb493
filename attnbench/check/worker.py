"""A timing worker for ``check --base``: one process measuring the methods of one source tree.

Run as ``python -c BOOT ROOT worker.py`` (see ``ab.start_worker``): ``sys.path[0]`` is ROOT, so
``import attnbench`` gives that tree's package, the working tree or a revision's worktree. This
file imports nothing else from attnbench: it relies only on what every revision has,
``attnbench.registry.create(name, heads=, head_dim=, **params)``, ``registry.get_info(name).budget``,
``registry.load_plugin(spec)`` and the module call ``module(q, k, v, grid=...)``.

Protocol: one JSON line per message. The parent sends the job (entries, settings, the inputs
file, where to save the outputs); the worker builds every entry, runs it once, saves the outputs
and answers ``{"ready": {key: {"status", "message", "number"}}}``. Then each
``{"time": key, "number": k}`` is answered with ``{"ms": milliseconds per call}`` for k calls in
a row, until ``{"quit": true}``. Anything the methods print goes to stderr.
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


def prepare(registry, entry, job, inputs):
    """(status, message, call, output) of one entry; a failure is a status, not a crash."""
    import torch

    s = job["settings"]
    try:
        registry.get_info(entry["method"])
    except KeyError:
        return "skipped", f"{entry['method']} is not registered", None, None
    q, k, v, grid = inputs[entry["n"]]                            # (B, H, N, d) each
    try:
        module = build(registry, entry, s["heads"], s["head_dim"], s["seed"]).to(s["device"]).eval()
        why = getattr(module, "unsupported_reason", None)
        reason = why(s["device"], s["dtype"], entry["n"], s["head_dim"]) if why else None
        if reason:
            return "skipped", str(reason), None, None

        def call():
            with torch.no_grad():
                return module(q, k, v, grid=grid)
        out = call()                                              # (B, H, N, d)
    except Exception as exc:  # the method's failure is its result
        return "error", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300], None, None
    return "ok", None, call, out.detach().cpu()


def timed(call, number, cuda):
    """Milliseconds per call over ``number`` calls in a row."""
    import torch

    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(number):
        call()
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3 / number


def calls_per_part(call, part_ms, cuda):
    """Warm up, then the number of calls that fills ``part_ms`` milliseconds."""
    call()
    return max(1, math.ceil(part_ms / max(timed(call, 1, cuda), 1e-3)))


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
        inputs = {n: tuple(t.to("cuda") if torch.is_tensor(t) else t for t in x) for n, x in inputs.items()}
    calls, outputs, ready = {}, {}, {}
    for entry in job["entries"]:
        status, message, call, result = prepare(registry, entry, job, inputs)
        number = calls_per_part(call, s["block_ms"] / s["parts"], cuda) if call else 0
        calls[entry["key"]], outputs[entry["key"]] = call, result
        ready[entry["key"]] = {"status": status, "message": message, "number": number}
    torch.save({k: o for k, o in outputs.items() if o is not None}, job["outputs"])
    package = str(Path(sys.modules["attnbench"].__file__).resolve().parent)
    out.write(json.dumps({"ready": ready, "package": package}) + "\n")
    for line in inp:
        cmd = json.loads(line)
        if cmd.get("quit"):
            return
        out.write(json.dumps({"ms": timed(calls[cmd["time"]], cmd["number"], cuda)}) + "\n")


def main():
    inp, out = protocol_streams()
    job = json.loads(inp.readline())
    serve(job, inp, out)


if __name__ == "__main__":
    main()
