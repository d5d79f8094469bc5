"""The one exception type that user-facing layers turn into a one-line message (exit code 2)."""


class UserError(Exception):
    """A problem with the user's input: one line, says what to change."""
