"""Errors a user can act on.

An ``InputError`` message names the file (and line or key) and what is wrong with it, e.g.
``labels/part_7.txt:3: class id 5 >= 3 classes in data.yaml``. The CLI prints it without a traceback.
"""


class InputError(ValueError):
    """Bad input a user can fix: a file, a line, a key, a value."""
