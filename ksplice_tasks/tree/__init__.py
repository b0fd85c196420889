# SPDX-License-Identifier: GPL-2.0-only
"""The kernel tree: driving Kbuild, reading its .cmd files, post-tree snapshots."""
