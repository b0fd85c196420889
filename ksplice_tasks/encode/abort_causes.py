# SPDX-License-Identifier: GPL-2.0-only
"""Why an apply or reverse fails: the one list both the kernel side and the target commands use.

The kernel side records one of these causes when an operation aborts
(``/sys/module/ksplice_<id>/ksplice/abort_cause`` shows its name) and fails
the ``stage`` write with the cause's errno.  ``kmodsrc/ksplice_abort.h`` is
generated from :data:`ABORT_CAUSES` (:func:`render_abort_header`): the
``enum ksplice_abort``, ``ksplice_abort_name()`` and ``ksplice_abort_errno()``.
``ksplice-apply`` and ``ksplice-undo`` (``target/apply.py``) read the same
list to tell the user what a cause means.  A unit test checks that the
checked-in header is the generated one and compiles it.

Regenerate the header with::

    python -m ksplice_tasks.encode.headers
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

HEADER_NAME = "ksplice_abort.h"


@dataclass(frozen=True)
class AbortCause:
    """One abort cause.

    ``name`` is what sysfs shows; ``errno`` the error the ``stage`` write
    fails with (an ``errno`` module name, empty for ``none``); ``doc`` says
    when the kernel side records it; ``explain`` is what the user is told
    (empty: the target commands print the raw name).
    """

    name: str
    errno: str
    doc: str
    explain: str = ""

    @property
    def enumerator(self) -> str:
        """The C enumerator: ``KSPLICE_ABORT_<NAME>``."""
        return "KSPLICE_ABORT_" + self.name.upper()


# In enum order; KSPLICE_ABORT_NONE (0) first.
ABORT_CAUSES: tuple[AbortCause, ...] = (
    AbortCause("none", "", "no abort: the last operation succeeded"),
    AbortCause("no_helper", "EINVAL", "the first apply needs the helper",
               "the update's helper module is not loaded"),
    AbortCause("map_mismatch", "EINVAL", "System.map is not the running kernel's",
               "the System.map the update was built with does not describe the running "
               "kernel (System.map mismatch)"),
    AbortCause("no_match", "EINVAL", "run-pre matching failed",
               "the update's original code does not match the running kernel (no match): "
               "it was built from a different kernel source or configuration"),
    AbortCause("traced", "EINVAL", "ftrace or livepatch owns an entry",
               "ftrace or livepatch is attached to a function the update replaces"),
    AbortCause("unresolved", "EINVAL", "a symbol has no (unique) value",
               "a symbol the update needs has no unique address in the running kernel"),
    AbortCause("code_busy", "EBUSY", "a task is inside the code, after retries",
               "a task is running or sleeping inside a function the update replaces "
               "(code busy); try again later"),
    AbortCause("code_changed", "EINVAL", "patch site bytes are not what was saved",
               "the code to be patched was changed by someone else"),
    AbortCause("already_applied", "EEXIST", "apply while applied",
               "the update is already applied"),
    AbortCause("not_applied", "EINVAL", "reverse while not applied",
               "the update is not applied"),
    AbortCause("nomem", "ENOMEM", "an allocation failed",
               "the kernel ran out of memory"),
    AbortCause("bad_encoding", "EINVAL", "a value does not fit its field",
               "an address does not fit its instruction field"),
    AbortCause("not_loaded", "EINVAL", "a replaced function's module is not loaded",
               "a function the update replaces is in a module that is not loaded "
               "(not loaded); load the module, then apply again"),
    AbortCause("jump_label", "EINVAL", "the new code's jump labels cannot be registered",
               "the update's new code has jump labels the kernel cannot register (the "
               "update module has jump labels of its own, or the kernel lacks "
               "CONFIG_JUMP_LABEL)"),
)

BY_NAME: dict[str, AbortCause] = {c.name: c for c in ABORT_CAUSES}


def explain(name: str) -> str:
    """One line for a cause read from sysfs; unknown names are quoted as they are."""
    c = BY_NAME.get(name)
    return c.explain if c and c.explain else f"the kernel reported {name!r}"


def _switch(lines: list[str], func: str, ret: str, arg: str, values: Sequence[str],
            default: str, doc: str) -> None:
    lines += ["", f"/* {doc} */", f"static inline {ret}{func}(enum ksplice_abort {arg})", "{",
              f"\tswitch ({arg}) {{"]
    for c, v in zip(ABORT_CAUSES, values, strict=True):
        lines += [f"\tcase {c.enumerator}:", f"\t\treturn {v};"]
    lines += ["\tdefault:", "\t\treturn " + default + ";", "\t}", "}"]


def render_abort_header() -> str:
    """``kmodsrc/ksplice_abort.h``: the C side of :data:`ABORT_CAUSES`."""
    lines = [
        "/* SPDX-License-Identifier: GPL-2.0 */",
        "/*",
        " * Why an apply or reverse aborted.  Generated from",
        " * ksplice_tasks/encode/abort_causes.py; regenerate with:",
        " * python -m ksplice_tasks.encode.headers",
        " */",
        "#ifndef _KSPLICE_ABORT_H",
        "#define _KSPLICE_ABORT_H",
        "",
        "#include <linux/errno.h>",
        "",
        "/* Shown in sysfs as abort_cause (ksplice_abort_name()). */",
        "enum ksplice_abort {",
    ]
    lines += [f"\t{c.enumerator}, /* {c.doc} */" for c in ABORT_CAUSES]
    lines.append("};")
    _switch(lines, "ksplice_abort_name", "const char *", "cause",
            [f'"{c.name}"' for c in ABORT_CAUSES], '"unknown"',
            "The name sysfs shows for @cause.")
    _switch(lines, "ksplice_abort_errno", "int ", "cause",
            [f"-{c.errno}" if c.errno else "0" for c in ABORT_CAUSES], "-EINVAL",
            "What the stage write fails with when @cause aborted the operation.")
    lines += ["", "#endif /* _KSPLICE_ABORT_H */", ""]
    return "\n".join(lines)
