# SPDX-License-Identifier: GPL-2.0-only
"""Output encoders: the .ksplice.* tables the update modules carry."""
