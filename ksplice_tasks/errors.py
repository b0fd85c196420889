# SPDX-License-Identifier: GPL-2.0-only
"""The one exception type that front ends print as a single line."""


class UserError(Exception):
    """Bad input or a refused operation: reported as one line, nothing changed on disk."""
