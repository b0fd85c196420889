# SPDX-License-Identifier: GPL-2.0-only
"""The object layer: ELF model, kernel special sections, objdiff and the object passes."""
