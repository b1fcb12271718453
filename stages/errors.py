"""The one error type that means "the user gave bad input": the CLI prints its message on one line and exits 2."""


class InputError(ValueError):
    """Bad input a user can fix (missing data, malformed file, unknown key). The message names the problem and the fix."""
