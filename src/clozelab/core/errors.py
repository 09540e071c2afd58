"""One exception type for every user-facing error.

A ``ClozelabError`` message names what is wrong (the key or the file), the value found and the fix.
The CLI prints the message alone (no traceback) and exits with status 2.
"""


class ClozelabError(ValueError):
    """Bad input from the user: a config value, a file, a combination of components."""


class BuildError(ClozelabError):
    """A component could not be built from its config node (``core.config.build``).

    ``inside``: the failure came from the component's own code (its constructor ran and raised
    something other than a ClozelabError), not from the call (a keyword it does not take)."""

    def __init__(self, message: str, inside: bool = False):
        super().__init__(message)
        self.inside = inside


def user_message(exc: BaseException) -> str:
    """The message the CLI prints for ``exc``: its own text, also when a DataLoader worker raised
    it (PyTorch re-raises a worker's exception with ``Caught X in DataLoader worker process N``
    and the worker's whole traceback as its message; the message is that traceback's last line,
    e.g. a corruption's runtime refusal such as T5's sentinel overflow)."""
    text = str(exc)
    marker = f"{type(exc).__name__}: "
    if text.startswith("Caught ") and "Original Traceback" in text and marker in text:
        return text.rsplit(marker, 1)[1].strip()
    return text


def config_error(key: str, value: object, problem: str, fix: str) -> ClozelabError:
    """Build the standard message: ``<key>=<value>: <problem>. Fix: <fix>``."""
    return ClozelabError(f"{key}={value!r}: {problem}. Fix: {fix}")


def check_int(value: object, key: str, minimum: int, why: str, fix: str) -> int:
    """Return ``value`` after checking it is an integer >= ``minimum`` (``why``: what the bound
    leaves room for, in the message)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise config_error(key, value, f"must be an integer >= {minimum} ({why})", fix)
    return value


def check_choice(value: object, key: str, choices, fix: str | None = None) -> str:
    """Return ``value`` after checking it is one of ``choices``; the fix defaults to the first."""
    choices = tuple(choices)
    if value not in choices:
        raise config_error(
            key, value, f"must be one of {list(choices)}", fix or f"set {key}={choices[0]}"
        )
    return str(value)
