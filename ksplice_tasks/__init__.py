# SPDX-License-Identifier: GPL-2.0-only
"""ksplice-py: rebootless Linux kernel updates, built as a doit task graph.

One module per pipeline stage; `graph` declares the doit tasks that tie them.
"""
