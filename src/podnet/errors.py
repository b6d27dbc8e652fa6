"""The error a user's mistake raises: what is wrong and how to fix it. Every command prints it
as `podnet <command>: <what> (<fix>)` and exits non-zero, with no traceback."""

from __future__ import annotations


class UserError(ValueError):
    def __init__(self, what: str, fix: str) -> None:
        super().__init__(f"{what} ({fix})")
        self.what = what
        self.fix = fix

    @classmethod
    def of(cls, message: str, fix: str) -> UserError:
        """A message that ends in '(fix)' as its what and fix; else with `fix`."""
        what, sep, own = message.rpartition(" (")
        if sep and own.endswith(")"):
            return cls(what, own[:-1])
        return cls(message, fix)
