"""One exception type for user mistakes: the CLI prints its message on one line and exits non-zero."""


class PrefdataError(Exception):
    """An expected error (bad input, missing model, unreachable server).

    The message says what is wrong and how to fix it. The CLI prints it as one line, with no traceback.
    """

    exit_code = 2
