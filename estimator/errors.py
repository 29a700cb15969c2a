"""The one exception type that the CLI turns into a one-line error (exit code 2)."""


class MemcalError(ValueError):
    """Bad input: an unknown model, a malformed config, an impossible workload.

    Its message is one line that names the problem and, where there is one, the fix.
    """
