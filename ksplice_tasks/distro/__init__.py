# SPDX-License-Identifier: GPL-2.0-only
"""Distribution kernels as targets: what a distribution ships, fetched and laid out for ksplice."""
