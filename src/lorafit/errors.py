"""Errors that reach the user as one line and an exit code, never as a traceback."""


class UserError(Exception):
    """A mistake the user can fix (bad config, missing file, bad data). The CLI prints it and exits 2."""

    exit_code = 2


class HubUnreachableError(UserError):
    """A model or dataset had to come from the Hugging Face Hub, and the Hub could not be reached."""
