"""What the one-line error messages of the command-line tools and loaders share."""

__all__ = ["first_line"]


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, "" if it has none.

    A KeyError's message comes without the quotes ``str(KeyError)`` adds.
    """
    message = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    lines = message.strip().splitlines()
    return lines[0] if lines else ""
