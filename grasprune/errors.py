"""The exceptions the user-facing layers turn into a message and an exit code."""


class UserError(Exception):
    """A problem with the user's input: one line, says what to change (exit code 2)."""


class Stopped(Exception):
    """Training was asked to stop; its state is checkpointed and the run can resume (exit code 3)."""
