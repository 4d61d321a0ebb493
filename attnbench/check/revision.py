"""Git revisions for ``check --base``: resolving one, and its source tree in a temporary worktree."""
from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

from attnbench.check.baselines import BaselineError


class RevisionError(BaselineError):
    """A --base revision that cannot be used; the message is one line naming it."""


def git(repo: Path, *args: str) -> str:
    """Output of ``git -C repo args``; RevisionError when git is missing or fails."""
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RevisionError(f"git {' '.join(args)} failed: {exc}") from None
    if done.returncode:
        raise RevisionError((done.stderr.strip().splitlines() or [f"git {args[0]} failed"])[-1])
    return done.stdout.strip()


def repo_root(start: Path) -> Path | None:
    """The top of the git checkout holding ``start``, or None outside one."""
    try:
        return Path(git(start, "rev-parse", "--show-toplevel"))
    except RevisionError:
        return None


def resolve(repo: Path, rev: str) -> str:
    """The commit hash of ``rev``; RevisionError naming it when it is not a commit here."""
    try:
        return git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except RevisionError:
        raise RevisionError(f"unknown --base revision {rev!r} in {repo}") from None


def baseline_revision(repo: Path | None, path: Path) -> tuple[str | None, str]:
    """(commit, why): the last commit that changed the baseline file, or None and the reason."""
    if repo is None:
        return None, "not a git checkout"
    if git(repo, "rev-parse", "--is-shallow-repository") == "true":
        return None, "a shallow clone (its history is cut off)"
    try:
        rel = Path(path).resolve().relative_to(repo.resolve())
    except ValueError:
        return None, f"{path} is outside the checkout"
    sha = git(repo, "log", "-1", "--format=%H", "--", str(rel))
    if not sha:
        return None, f"{rel} was never committed"
    return sha, f"the last commit that changed {rel}"


@contextlib.contextmanager
def worktree(repo: Path, sha: str) -> Iterator[Path]:
    """A detached worktree of ``sha`` in a new temporary folder outside the checkout, removed after."""
    tmp = Path(tempfile.mkdtemp(prefix="attnbench-base-"))
    where = tmp / "tree"
    try:
        git(repo, "worktree", "add", "--detach", "--quiet", str(where), sha)
        yield where
    finally:
        with contextlib.suppress(RevisionError):
            git(repo, "worktree", "remove", "--force", str(where))
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(RevisionError):
            git(repo, "worktree", "prune")
