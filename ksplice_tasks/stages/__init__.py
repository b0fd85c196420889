# SPDX-License-Identifier: GPL-2.0-only
"""The pipeline's stages: one module per family of doit tasks, actions as plain functions."""
