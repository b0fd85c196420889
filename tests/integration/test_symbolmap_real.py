# SPDX-License-Identifier: GPL-2.0-only
"""The "another kernel" check on real prebuilt objects: the right map passes, others are refused."""

from __future__ import annotations

import pytest
from helpers import Prebuilt

from ksplice_tasks import symbolmap
from ksplice_tasks.errors import UserError
from ksplice_tasks.stages import kmod
from ksplice_tasks.testing import testkernel

pytestmark = pytest.mark.kernel
OBJECTS = ["fs/proc/loadavg.o", "kernel/sys.o", "fs/proc/version.o", "kernel/fork.o",
           "mm/filemap.o", "fs/binfmt_misc.o"]


def test_size_check_on_real_objects(prebuilt_smp: Prebuilt, kernel_up: testkernel.TestKernel,
                                    kernel_lp: testkernel.TestKernel) -> None:
    def smap(k: testkernel.TestKernel) -> dict[str, list[int]]:
        return symbolmap.parse_system_map((k.orig_config / "System.map").read_text())

    assert kmod.check_pre_objects(prebuilt_smp.ksrc, OBJECTS, smap(prebuilt_smp.kernel),
                                  "smp") > 200
    for other in (kernel_up, kernel_lp):
        with pytest.raises(UserError, match="is not the map of the kernel"):
            kmod.check_pre_objects(prebuilt_smp.ksrc, OBJECTS, smap(other), other.variant)
