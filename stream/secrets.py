"""Credentials come from the environment or from a file outside the repository, never from TOML."""

from __future__ import annotations

import os
from pathlib import Path


class SecretError(ValueError):
    pass


def _inside_git_worktree(path: Path) -> Path | None:
    for parent in [path, *path.parents]:
        if (parent / ".git").exists():
            return parent
    return None


def read_secret(what: str, env: str | None = None, file: str | None = None) -> str | None:
    """Return a secret from ``$env`` or from ``file`` (first line, stripped), or None if neither
    is configured. A file inside a git work tree is refused, so secrets never get committed."""
    if env:
        value = os.environ.get(env)
        if value is None:
            raise SecretError(f"{what}: environment variable {env} is not set")
        return value
    if file:
        path = Path(file).expanduser().resolve()
        repo = _inside_git_worktree(path.parent)
        if repo is not None:
            raise SecretError(f"{what}: {path} is inside the git work tree {repo}; keep secrets "
                              "outside any repository")
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise SecretError(f"{what}: cannot read {path}: {exc}") from exc
    return None
