# SPDX-License-Identifier: GPL-2.0-only
"""tests/hostile: what a hostile user, a kill or a race does to ksplice-create.

Every test here feeds one bad input or fault and checks the outcome the
project promises: a one-line error with a nonzero exit (never a traceback),
and the source tree, the pre tree and the post tree as they were.  Tests that
mutate a real tree use ``hostile_lp`` (tests/conftest.py), a targeted prebuild
of their own.
"""
