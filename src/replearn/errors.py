"""Errors meant for the person at the terminal: the CLI prints their message, not a traceback."""


class UserError(Exception):
    """Bad input or a step run out of order; the message says what is wrong and what to do."""
