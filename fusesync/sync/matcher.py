"""Which paths a target excludes or encrypts: gitignore syntax, one matcher, one meaning."""

from __future__ import annotations

from collections.abc import Iterable

ENCRYPT_CHECKED = "encrypt_checked"
"""Index meta key: the encrypt list (its lines joined) as it stood at the last push that
looked at every row for files still plaintext on the remote (sync/sealed.py)."""


def encrypt_mark(encrypt: Iterable[str]) -> str:
    """An encrypt list as ENCRYPT_CHECKED records it."""
    return "\n".join(encrypt)


class PathMatcher:
    """Matches relative POSIX paths; directories are asked about with `is_dir=True`."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        if self.patterns:  # pathspec loads in 8 ms: not for a target that names nothing
            import pathspec

            self._spec = pathspec.GitIgnoreSpec.from_lines(self.patterns)

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def matches(self, relpath: str, is_dir: bool = False) -> bool:
        if not self.patterns:
            return False
        if is_dir:
            relpath += "/"
        # GitIgnoreSpec also matches paths inside a matched directory, as git does
        return bool(self._spec.match_file(relpath))
