# SPDX-License-Identifier: GPL-2.0-only
"""A doit reporter that speaks like ksplice-create: phases, progress, one-line errors."""

from __future__ import annotations

import sys

from doit.exceptions import TaskFailed, UnmetDependency
from doit.reporter import ConsoleReporter


class KspliceReporter(ConsoleReporter):
    """Quiet for up-to-date tasks; a refused input is `PROG: error: message` on stderr."""

    desc = "ksplice phases and one-line errors"
    prog = "ksplice"

    def __init__(self, outstream, options):
        super().__init__(outstream, options)
        self.executed = 0

    def execute_task(self, task):
        if task.actions and not task.name.startswith("_"):
            self.executed += 1
            doc = (task.doc or task.name).splitlines()[0]
            self.write(f"==> {task.name}: {doc}\n")

    def skip_uptodate(self, task):
        pass

    def skip_ignore(self, task):
        pass

    def add_failure(self, task, fail):
        if isinstance(fail, UnmetDependency):
            return
        if isinstance(fail, TaskFailed):
            # Our actions turn UserError into TaskFailed carrying just the message.
            sys.stderr.write(f"{self.prog}: error: {fail.message}\n")
            sys.stderr.flush()
            return
        super().add_failure(task, fail)

    def complete_run(self):
        if self.failures or self.runtime_errors:
            super().complete_run()
        elif self.executed == 0:
            self.write("Nothing to do: everything is up to date.\n")


class CreateReporter(KspliceReporter):
    prog = "ksplice-create"
