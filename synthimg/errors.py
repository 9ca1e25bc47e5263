"""The one exception type for errors a user can cause; the CLI prints it as one line, exit 2."""


class SynthimgError(Exception):
    """Bad input: an unknown task, a bad config value, a missing file, a dead service.

    The message must be a single line that says what is wrong and, where the set is
    finite, what the valid choices are.
    """
