"""Which comparison a check makes: the stored baseline, or A/B against a git revision.

On the machine class the baseline was measured on, the stored baseline. Elsewhere (a ratio to
plain attention depends on the microarchitecture) the check says so and compares the working
tree side by side with the last commit that changed the baseline file; ``--base REV`` asks for
that comparison with REV anywhere. With no usable revision it falls back to the stored baseline
with the wider FALLBACK_TOLERANCE, and prints it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from attnbench.check.device import baseline_machine_class, machine_class
from attnbench.check.revision import RevisionError, baseline_revision, git, repo_root, resolve

DEFAULT_TOLERANCE = 0.15    # stored baseline, on its own machine class
AB_TOLERANCE = 0.10         # side by side with a revision
FALLBACK_TOLERANCE = 0.40   # stored baseline from another machine class (no revision to compare with)


@dataclass(frozen=True)
class Mode:
    """The comparison chosen: ``sha`` None means the stored baseline."""

    tolerance: float
    sha: str | None = None
    label: str = ""
    repo: Path | None = None


def head_root() -> Path:
    """The folder holding the package being checked (the working tree of a checkout)."""
    import attnbench
    return Path(attnbench.__file__).resolve().parent.parent


def absolute_plugins(plugins: tuple[str, ...]) -> tuple[str, ...]:
    """Plugin files as absolute paths (module names unchanged), for workers in other folders."""
    return tuple(str(Path(p).resolve()) if Path(p).exists() else p for p in plugins)


def revision_mode(repo: Path | None, rev: str, tolerance: float | None) -> Mode:
    """A/B against ``rev``; RevisionError naming it when it is unknown or has no package."""
    if repo is None:
        raise RevisionError(f"--base {rev!r} needs a git checkout; {head_root()} is not in one")
    sha = resolve(repo, rev)
    try:
        git(repo, "cat-file", "-e", f"{sha}:attnbench/registry.py")
    except RevisionError:
        raise RevisionError(f"--base revision {rev!r} has no attnbench/registry.py to measure") from None
    return Mode(AB_TOLERANCE if tolerance is None else tolerance, sha, rev, repo)


def choose_mode(opts: Any, baseline: dict[str, Any], echo: Callable[[str], None],
                here: str | None = None) -> Mode:
    """The comparison for ``opts`` (a CheckOptions): --base, the stored baseline on its own
    machine class, else A/B against the baseline file's last commit, else the wider fallback."""
    repo = repo_root(head_root())
    if opts.base:
        return revision_mode(repo, opts.base, opts.tolerance)
    here, stored = here or machine_class(opts.device), baseline_machine_class(baseline)
    if here == stored:
        return Mode(DEFAULT_TOLERANCE if opts.tolerance is None else opts.tolerance)
    sha, why = baseline_revision(repo, opts.baseline)
    if sha is not None:
        echo(f"this machine ({here}) is not the baseline's ({stored}): comparing side by side with "
             f"{sha[:12]}, {why}")
        return Mode(AB_TOLERANCE if opts.tolerance is None else opts.tolerance, sha, sha[:12], repo)
    tol = FALLBACK_TOLERANCE if opts.tolerance is None else opts.tolerance
    echo(f"this machine ({here}) is not the baseline's ({stored}) and there is no revision to compare "
         f"with ({why}): stored baseline with the wider tolerance {tol:g}")
    return Mode(tol)
