# SPDX-License-Identifier: GPL-2.0-only
"""What Python and the kernel side must agree on: the .ksplice.* table layout, the abort
causes, and the generated C headers that carry both into kmodsrc/."""
