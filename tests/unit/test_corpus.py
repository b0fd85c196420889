# SPDX-License-Identifier: GPL-2.0-only
"""The corpus harness's pure logic: cutting and classifying small synthetic changes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ksplice_tasks.testing import corpus
from ksplice_tasks.tree.csource import strip_c

BASE = """\
// SPDX-License-Identifier: GPL-2.0
#include <linux/kernel.h>

struct foo {
\tint a;
\tint b;
};

static int limit = 4;

static const struct file_operations foo_fops = {
\t.read = foo_read,
};

/* add two numbers */
static int add(int a, int b)
{
\treturn a + b;
}

static int __init foo_init(void)
{
\treturn add(1, 2);
}

__printf(2, 3)
int foo_log(int level,
\t    const char *fmt, ...)
{
\treturn level;
}
"""


def change(old: str, new: str) -> str:
    assert old in BASE, old
    return BASE.replace(old, new)


def test_blocks_finds_functions_types_and_initializers() -> None:
    got = [(b.kind, b.name) for b in corpus.blocks(BASE)]
    assert got == [("type", "struct foo"), ("initializer", "foo_fops"), ("function", "add"),
                   ("function", "foo_init"), ("function", "foo_log")]
    log = corpus.blocks(BASE)[-1]
    assert BASE.splitlines()[log.start] == "__printf(2, 3)"


@pytest.mark.parametrize(("head", "name"), [
    ("static int add(int a, int b)", "add"),
    ("__printf(2, 3) int foo_log(int level, const char *fmt, ...)", "foo_log"),
    ("SYSCALL_DEFINE1(umask, int, mask)", "SYSCALL_DEFINE1"),
    ("static void debug(struct h *b) __must_hold(&b->lock)", "debug"),
    ("no parenthesis", "?"),
])
def test_function_name(head: str, name: str) -> None:
    assert corpus.function_name(head) == name


@pytest.mark.parametrize(("old", "new", "kind", "functions"), [
    ("\treturn a + b;\n}\n\nstatic int __init", "\treturn a - b;\n}\n\nstatic int __init",
     "code", ("add",)),
    ("/* add two numbers */", "/* add two integers */", "noop", ()),
    ("\treturn a + b;", "\treturn  a+b;", "noop", ()),
    ("\tint b;\n};", "\tint b;\n\tint c;\n};", "data", ()),
    # the pipeline's own check (tree/datalayout.py): a new type, or a comment in one, is not data
    ("static int limit = 4;", "struct bar {\n\tint z;\n};\n\nstatic int limit = 4;", "code", ()),
    ("\tint b;\n};", "\tint b;\t/* the b */\n};", "noop", ()),
    ("\treturn a + b;", "\treturn a + b + sizeof(struct bar);", "code", ("add",)),
    ("\t.read = foo_read,\n", "\t.read = foo_read,\n\t.open = foo_open,\n", "data", ()),
    ("static int limit = 4;", "static int limit = 8;", "data", ()),
    ("\treturn add(1, 2);", "\treturn add(2, 2);", "init", ("foo_init",)),
    ("\treturn level;", "\treturn level + 1;", "code", ("foo_log",)),
    ("#include <linux/kernel.h>\n", "#include <linux/kernel.h>\n#define LIMIT 3\n", "code", ()),
    ("static int limit = 4;", "static int __read_mostly limit = 4;", "noop", ()),
    ("static int limit = 4;", "static int __rcu limit = 5;", "data", ()),
    ("static const struct file_operations foo_fops = {\n\t.read = foo_read,",
     "static const struct file_operations foo_fops __initconst = {\n\t.read = foo_read,",
     "data", ("foo_fops (init data)",)),
])
def test_classify(old: str, new: str, kind: str, functions: tuple[str, ...]) -> None:
    got = corpus.classify(BASE, change(old, new))
    assert (got.kind, got.functions) == (kind, functions), got


def test_classify_code_wins_over_init_and_data_wins_over_code() -> None:
    both = change("\treturn add(1, 2);", "\treturn add(2, 2);").replace("a + b", "a - b")
    assert corpus.classify(BASE, both).kind == "code"
    assert corpus.classify(BASE, both).functions == ("add", "foo_init")
    data = both.replace("static int limit = 4;", "static int limit = 5;")
    assert corpus.classify(BASE, data).kind == "data"


def test_a_new_function_and_a_new_variable_are_code() -> None:
    new = BASE + "\nstatic int extra;\n\nint more(void)\n{\n\treturn extra;\n}\n"
    got = corpus.classify(BASE, new)
    assert (got.kind, got.functions) == ("code", ("more",))


def test_strip_c_keeps_comment_marks_inside_strings() -> None:
    assert strip_c('x = "/* a */";  // c\n') == 'x="/* a */";'
    assert strip_c("a /* b */ c") == "ac"


def test_file_kind() -> None:
    built = frozenset({"kernel/fork.c"})
    assert corpus.file_kind("kernel/fork.c", built) is None
    assert corpus.file_kind("kernel/other.c", built) == "notbuilt"
    assert corpus.file_kind("include/linux/sched.h", built) == "header"
    assert corpus.file_kind("arch/x86/entry/entry_64.S", built) == "other"


def test_sample_is_stable_and_counts_code_fixes() -> None:
    cases = [corpus.Case(f"f{i}.c", "code" if i % 3 else "data") for i in range(30)]
    cases += [corpus.Case("h.h", "header"), corpus.Case("m.c", "notbuilt")]
    a = corpus.sample(cases, 5)
    assert sum(c.kind == "code" for c in a) == 5
    assert sum(c.kind == "data" for c in a) == 10   # every expected refusal
    assert [c.path for c in a] == [c.path for c in corpus.sample(list(reversed(cases)), 5)]
    keys = [corpus.sample_key(c.path) for c in a]
    assert keys == sorted(keys)
    everything = corpus.sample(cases, None)
    assert len(everything) == 30
    assert [c.path for c in everything if c.kind == "code"][:5] == [
        c.path for c in a if c.kind == "code"]


def test_unified_applies_with_patch(tmp_path: Path) -> None:
    new = change("\treturn a + b;", "\treturn a - b;")
    (tmp_path / "kernel").mkdir()
    (tmp_path / "kernel/x.c").write_text(BASE)
    res = subprocess.run(["patch", "-p1", "-s"], input=corpus.unified("kernel/x.c", BASE, new),
                         cwd=tmp_path, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (tmp_path / "kernel/x.c").read_text() == new


def test_builtin_sources_skip_modules_and_host_programs() -> None:
    text = "\n".join([
        "  gcc -Wp,-MMD,kernel/.fork.o.d -D__KERNEL__ -O2 -c -o kernel/fork.o kernel/fork.c",
        "  gcc -Wp,-MMD,fs/x/.a.o.d -D__KERNEL__ -DMODULE -c -o fs/x/a.o fs/x/a.c",
        "  gcc -Wp,-MMD,scripts/.b.o.d -O2 -c -o scripts/b.o scripts/b.c",
        "  gcc -D__KERNEL__ -c -o mm/util.o /tree/mm/util.c; true",
    ])
    assert corpus.builtin_sources(text, "/tree") == {"kernel/fork.c", "mm/util.c"}


def test_jump_ok() -> None:
    site, repl = 0xFFFFFFFF81000000, 0xFFFFFFFFC0001000
    rel = (repl - (site + 5)).to_bytes(4, "little", signed=True)
    assert corpus.jump_ok(b"\xe9" + rel, site, repl)
    assert not corpus.jump_ok(b"\xe9" + rel, site, repl + 1)
    assert not corpus.jump_ok(b"\x0f\x1f\x44\x00\x00", site, repl)
    assert not corpus.jump_ok(b"\xe9", site, repl)


def test_parse_patches_and_guest_output() -> None:
    rows = corpus.parse_patches("f old=1 site=5 repl=9 size=3 before=aa now=aa module=x\n"
                                "g unresolved\n")
    assert rows == [{"name": "f", "old": "1", "site": "5", "repl": "9", "size": "3",
                     "before": "aa", "now": "aa", "module": "x"}]
    out = ("@@start a\n@@case " + json.dumps({"case": "a", "applied": True}) + "\n"
           "@@start b\nnoise\n")
    results, crashed = corpus.parse_guest(out)
    assert list(results) == ["a"] and crashed == "b"
    out = ("@@start c\nrun-pre: f: found at 0x1\nrun-pre: g: failed\nrun-pre: h.part.0: several\n"
           "@@case " + json.dumps({"case": "c", "applied": False}) + "\n")
    assert corpus.parse_guest(out)[0]["c"]["runpre_failed"] == ["g", "h.part.0 (several)"]


def test_totals_and_table() -> None:
    cases = [corpus.Case("a.c", "code", created=True, applied=True, undone=True),
             corpus.Case("b.c", "code", created=False, reason="create: error at 0xffff12"),
             corpus.Case("c.c", "data", created=False, reason="create: error at 0xffff34")]
    tot = corpus.totals(cases, [*cases, corpus.Case("d.h", "header")])
    assert tot["cut"]["header"] == 1 and tot["cut"]["code"] == 2
    assert tot["run"]["code"] == {"cases": 2, "created": 1, "applied": 1, "undone": 1}
    assert tot["reasons"] == {"create: error at #": 2}
    assert tot["code_fixes"] == {"cases": 2, "unmeasurable": 0, "measured": 2, "created": 1,
                                 "applied": 1, "undone": 1}
    rows = corpus.table(cases)
    assert rows[2] == "| a.c | code | yes | yes | yes |  |"
    assert rows[3].startswith("| b.c | code | NO | - | - | create: error")


def test_changed_includes() -> None:
    text = ('#include <linux/mm.h>\n#include "internal.h"\n# include <asm/tlb.h>\n'
            '#include <linux/other.h>\n')
    changed = frozenset({"include/linux/mm.h", "mm/internal.h", "arch/x86/include/asm/tlb.h",
                         "include/linux/unrelated.h"})
    assert corpus.changed_includes(text, "mm/memory.c", changed) == [
        "include/linux/mm.h", "mm/internal.h", "arch/x86/include/asm/tlb.h"]
    assert corpus.changed_includes(text, "mm/memory.c", frozenset()) == []


def test_refusals_that_are_not_about_live_patching_are_not_counted_as_fixes() -> None:
    cases = [corpus.Case("a.c", "code", created=True, applied=True, undone=True),
             corpus.Case("b.c", "code", created=False, reason="create: ksplice-create: error: "
                         "Aborting: No changes detected (only __LINE__ constants changed)"),
             corpus.Case("c.c", "code", created=False, reason="create: Aborting: Applying the "
                         "patch appears to break the kernel build: x.c:1: error: y"),
             corpus.Case("d.c", "code", created=True, applied=False,
                         reason="apply: Aborted: no match")]
    tot = corpus.totals(cases, cases)
    assert tot["code_fixes"] == {"cases": 4, "unmeasurable": 2, "measured": 2, "created": 2,
                                 "applied": 1, "undone": 1}
    assert tot["reasons"][corpus.NO_OBJECT_CHANGE] == 1
    assert tot["reasons"][corpus.BUILD_ALONE] == 1
    init = corpus.Case("e.c", "code", created=False, reason="create: Aborting: No changes "
                       "detected (only __init/__exit code changed)")
    assert corpus.totals([init], [init])["reasons"] == {corpus.INIT_ONLY: 1}


@pytest.mark.parametrize(("args", "says"), [
    (["--pair", "170-999"], "unknown --pair '170-999'"),
    (["--limit", "0"], "--limit must be a positive number"),
    (["--target", "prod"], "unknown --target 'prod'"),
    (["-j", "0"], "-j must be a positive number"),
])
def test_bench_corpus_bad_input_is_one_line(args: list[str], says: str) -> None:
    repo = Path(corpus.__file__).resolve().parents[2]
    res = subprocess.run([sys.executable, str(repo / "bench" / "corpus.py"), *args],
                         capture_output=True, text=True, check=False,
                         env={**os.environ, "PYTHONPATH": str(repo)})
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and says in res.stderr, res.stderr
    assert res.stdout == ""


def test_a_changed_init_table_is_init() -> None:
    base = BASE.replace("static const struct file_operations foo_fops = {",
                        "static const struct dmi_system_id quirks[] __initconst = {")
    new = base.replace("\t.read = foo_read,\n", "\t.read = foo_read,\n\t{ .ident = \"x\" },\n")
    got = corpus.classify(base, new)
    assert (got.kind, got.functions) == ("init", ("quirks (init data)",))


def test_site_patched_without_kcore_compares_the_primarys_hashes(tmp_path: Path) -> None:
    row = {"name": "f", "site": "10", "repl": "20", "before": "aa", "now": "bb"}
    assert corpus.site_patched(row, tmp_path)            # no tmp_path/kcore
    assert not corpus.site_patched({**row, "now": "aa"}, tmp_path)
    assert not corpus.site_patched({**row, "before": "", "now": ""}, tmp_path)


def test_missing_names_from_gcc_errors() -> None:
    log = ("kernel/exit.c:558:16: error: \u2018struct task_struct\u2019 has no member named "
           "\u2018user_dumpable\u2019\n"
           "net/ipv4/tcp_output.c:4213:36: error: implicit declaration of function "
           "\u2018tcp_sk_rw\u2019; did you mean \u2018tcp_sk\u2019? [-Werror]\n"
           "x.c:1:1: note: \u2018note_only\u2019 declared here\n"
           "y.c:2:2: error: 'MAX_PROBE_EVENT_SIZE' undeclared (first use in this function)\n"
           "z.c:3:3: error: redefinition of \u2018dqgrab\u2019\n"
           "z.c:4:3: error: redefinition of \u2018dqgrab\u2019\n")
    assert corpus.missing_names(log) == ["user_dumpable", "tcp_sk_rw", "MAX_PROBE_EVENT_SIZE",
                                         "dqgrab"]


def test_companion_text_takes_only_the_hunks_naming_what_is_missing() -> None:
    old = "struct a {\n\tint x;\n};\n#define OLD 1\nint f(void);\n"
    new = ("struct a {\n\tint x;\n\tint user_dumpable;\n};\n#define OLD 2\nint f(void);\n"
           "int g(void);\n")
    part = corpus.companion_text(old, new, ["user_dumpable"])
    assert part == "struct a {\n\tint x;\n\tint user_dumpable;\n};\n#define OLD 1\nint f(void);\n"
    assert corpus.companion_text(old, new, ["nothing"]) == old
    assert corpus.companion_text(old, new, ["g"]).endswith("int f(void);\nint g(void);\n")


def test_over_budget_and_build_alone_are_not_counted_as_fixes() -> None:
    over = "create: " + corpus.OVER_BUDGET + ": include/net/tcp.h reach 312 objects"
    assert corpus.reason_group(over) in corpus.NOT_A_FIX
    alone = ("create: ksplice-create: error: Aborting: Applying the patch appears to break "
             "the kernel build: x.c:1:1: error: ...")
    assert corpus.reason_group(alone) == corpus.BUILD_ALONE
    cases = [corpus.Case("a.c", "code", reason=over), corpus.Case("b.c", "code", created=True,
                                                                   applied=True, undone=True)]
    assert corpus.totals(cases, cases)["code_fixes"] == {
        "cases": 2, "unmeasurable": 1, "measured": 1, "created": 1, "applied": 1, "undone": 1}


@pytest.mark.parametrize(("old", "new", "kind"), [
    # a body statement of a function whose "{" ends its head line (kernel/auditsc.c)
    ("static int f(int n) {\n\tint h = hash((u32)n);\n\treturn h;\n}\n",
     "static int f(int n) {\n\tint h = hash(n);\n\treturn h;\n}\n", "code"),
    # a prototype's continuation line (kernel/events/core.c)
    ("static void g(int a,\n\t\tenum s state);\n", "static void g(int a,\n\t\tenum t state);\n",
     "code"),
    # a definition that loses its initializer, or moves: the data is the same
    ("static bool busy = false;\nint x;\n", "int x;\nstatic bool busy;\n", "code"),
    ("static int limit = 4;\n", "static int limit = 8;\n", "data"),
    ("static int limit __read_mostly = 4;\n", "static int limit __read_mostly = 4 * 2;\n", "data"),
])
def test_classify_initial_values(old: str, new: str, kind: str) -> None:
    assert corpus.classify(old, new).kind == kind, corpus.classify(old, new)


def test_defines_function_sees_definition_heads_not_prototypes_or_calls() -> None:
    assert corpus.defines_function("int foo(void)\n{\n}\n", "foo")
    assert corpus.defines_function("static struct sk_buff *foo(struct sk_buff *p,\n"
                                   "\t\tstruct sk_buff *skb)\n{\n", "foo")
    assert not corpus.defines_function("int foo(void);\n", "foo")
    assert not corpus.defines_function("\treturn foo(1);\n", "foo")
    assert not corpus.defines_function("#define BAR foo(1)\n", "foo")
    assert not corpus.defines_function("int foobar(void)\n{\n", "foo")


def test_definer_is_the_other_changed_file_that_newly_defines_the_name(tmp_path: Path) -> None:
    from ksplice_tasks.testing import corpus_run
    old, new = tmp_path / "old", tmp_path / "new"
    for d in (old, new):
        (d / "net").mkdir(parents=True)
    (old / "net/a.c").write_text("void a(void)\n{\n}\n")
    (new / "net/a.c").write_text("void a(void)\n{\n\tpeek(1);\n}\n")
    (old / "net/b.c").write_text("int peek(int x);\n")          # only a prototype before
    (new / "net/b.c").write_text("int peek(int x)\n{\n\treturn x;\n}\n")
    (old / "net/c.c").write_text("int other(void)\n{\n}\n")
    (new / "net/c.c").write_text("int other(void)\n{\n\treturn peek(2);\n}\n")
    trees = corpus_run.Trees(old, new, [], ["net/a.c", "net/c.c", "net/b.c"])
    case = corpus.Case("net/a.c", "code")
    found = corpus_run._definer(trees, case, "peek")
    assert found is not None and found[0] == "net/b.c"
    assert corpus_run._definer(trees, case, "nothing") is None
    assert corpus_run._NOT_DEFINED.search(
        "ksplice-create: error: the new code of a refers to peek, which neither the running "
        "kernel (System.map) nor the update defines: ...").group(1) == "peek"
