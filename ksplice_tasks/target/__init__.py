# SPDX-License-Identifier: GPL-2.0-only
"""The target machine's commands: ksplice-apply, ksplice-view, ksplice-undo."""
