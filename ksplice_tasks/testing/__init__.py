# SPDX-License-Identifier: GPL-2.0-only
"""Test and demo support: cached real test kernels, qemu boots, the README's demo."""
