// SPDX-License-Identifier: GPL-2.0
/*
 * Apply and reverse an update (primary side).
 *
 * Apply resolves everything first, outside stop_machine: run-pre matching
 * in the helper, the old functions and their patch sites, every relocation
 * of the replacement code (written with text_poke while the code is still
 * unreachable), and the module's own imports.  Then, with CPU hotplug and
 * text_mutex held, stop_machine runs a callback on every online CPU.  One
 * CPU checks every task's kernel stack from its saved stack pointer up for
 * a word inside the code being replaced, and when none is found writes a
 * jmp rel32 over each old function, saving the bytes it covers; the other
 * CPUs spin until it is done.  The per-CPU idle tasks are checked too.
 * A busy check is retried a few times with a pause in between, then the
 * apply aborts as "code busy".
 *
 * stop_machine does not stop NMIs, so each 5-byte site is written the
 * breakpoint way: an int3 over its first byte, then bytes 1..4, then byte
 * 0, with every CPU serializing its instruction stream after each step (a
 * phase handshake with the spinning CPUs).  An NMI that reaches a site
 * meanwhile traps on the int3, and a die notifier, registered only around
 * the operation, sends it on to the replacement.  See kmodsrc/README.md.
 *
 * Reverse runs the same check over the replacement and the old code and
 * writes the saved bytes back.  While applied, the primary holds a
 * reference on itself, so it cannot be unloaded from under the jumps.
 */
#define pr_fmt(fmt) "ksplice: " fmt

#include <linux/cpu.h>
#include <linux/delay.h>
#include <linux/kallsyms.h>
#include <linux/kdebug.h>
#include <linux/kprobes.h>
#include <linux/kernel.h>
#include <linux/jump_label.h>
#include <linux/ktime.h>
#include <linux/notifier.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/sched/task.h>
#include <linux/sched/task_stack.h>
#include <linux/slab.h>
#include <linux/stop_machine.h>
#include <linux/string.h>
#include <linux/uaccess.h>
#include <asm/sync_core.h>
#include <asm/text-patching.h>
#include <asm/tsc.h>
#include <asm/unwind.h>

#include "patch.h"
#include "resolve.h"
#include "runpre.h"

#define KSPLICE_TRIES 5
#define KSPLICE_RETRY_MS 300

typedef void *(*ksplice_text_poke_fn)(void *addr, const void *opcode,
				      size_t len);
typedef int (*ksplice_stop_machine_fn)(cpu_stop_fn_t fn, void *data,
				       const struct cpumask *cpus);
typedef struct task_struct *(*ksplice_idle_task_fn)(int cpu);

/* The unexported kernel functions the primary calls, from ksplice_imports. */
struct ksplice_kernel {
	ksplice_text_poke_fn text_poke;
	struct mutex *text_mutex;	/* serializes text_poke() */
	ksplice_stop_machine_fn stop_machine_cpuslocked;
	ksplice_idle_task_fn idle_task;	/* a CPU's idle task */
	ksplice_mod_syms_fn mod_syms;	/* optional: patching loaded modules */
};

/* Shared by the CPUs inside one stop_machine call. */
struct ksplice_stop {
	struct ksplice_module *km;
	const struct ksplice_kernel *k;
	bool reverse;
	struct task_struct *caller;	/* the task that asked for the operation */
	unsigned long caller_sp;	/* its stack pointer on entry to ksplice */
	atomic_t done;
	atomic_t phase;			/* bumped by the master: serialize now */
	atomic_t acks;			/* other CPUs that serialized this phase */
	unsigned int others;		/* online CPUs but the master */
	bool poking;			/* int3s may be at the sites */
	atomic_t int3_hits;		/* traps the die notifier redirected */
	struct notifier_block nb;	/* DIE_INT3, only during the operation */
	unsigned int tasks_checked;	/* stacks checked, last stop_machine call */
	unsigned int idle_checked;	/* ...of them idle tasks */
	int ret;			/* of the work: 0 or -errno */
	pid_t busy_pid;
	char busy_comm[TASK_COMM_LEN];
	unsigned long busy_word;
	unsigned long busy_depth;	/* bytes below the top of its stack */
	bool busy_caller;
	u64 cycles;			/* the work on the master CPU */
};

static int ksplice_import(const struct ksplice_module *km, const char *name,
			  unsigned long *addr)
{
	if (!ksplice_import_lookup(km, name, addr))
		return 0;
	pr_warn("%s: cannot import %s\n", KSPLICE_ID, name);
	return -ENOENT;
}

/* The kernel functions the operation calls; aborts as unresolved without. */
static int ksplice_get_imports(struct ksplice_module *km,
			       struct ksplice_kernel *k)
{
	unsigned long a;

	if (ksplice_import(km, "text_poke", &a))
		return ksplice_fail(km, KSPLICE_ABORT_UNRESOLVED);
	k->text_poke = (ksplice_text_poke_fn)a;
	if (ksplice_import(km, "text_mutex", &a))
		return ksplice_fail(km, KSPLICE_ABORT_UNRESOLVED);
	k->text_mutex = (struct mutex *)a;
	if (IS_ENABLED(CONFIG_SMP)) {
		if (ksplice_import(km, "stop_machine_cpuslocked", &a))
			return ksplice_fail(km, KSPLICE_ABORT_UNRESOLVED);
		k->stop_machine_cpuslocked = (ksplice_stop_machine_fn)a;
	}
	if (ksplice_import(km, "idle_task", &a))
		return ksplice_fail(km, KSPLICE_ABORT_UNRESOLVED);
	k->idle_task = (ksplice_idle_task_fn)a;
	/* Without it, functions of loaded modules are simply not found. */
	if (!ksplice_import_lookup(km, "module_kallsyms_on_each_symbol", &a))
		k->mod_syms = (ksplice_mod_syms_fn)a;
	return 0;
}

/**
 * ksplice_hash() - FNV-1a hash of live kernel memory.
 * @addr: start
 * @size: bytes
 *
 * Shows that undo restored every byte of a patched function.
 *
 * Return: the hash, or 0 when the memory cannot be read.
 */
u64 ksplice_hash(unsigned long addr, unsigned long size)
{
	u64 h = 0xcbf29ce484222325ULL;
	u8 chunk[64];

	while (size) {
		unsigned long n = min_t(unsigned long, size, sizeof(chunk));
		unsigned long i;

		if (copy_from_kernel_nofault(chunk, (void *)addr, n))
			return 0;
		for (i = 0; i < n; i++)
			h = (h ^ chunk[i]) * 0x100000001b3ULL;
		addr += n;
		size -= n;
	}
	return h;
}

/* -- resolving ------------------------------------------------------------ */

static unsigned long ksplice_repl_size(const struct ksplice_module *km,
				       unsigned long repladdr)
{
	unsigned int i;

	for (i = 0; i < km->nr_sizes; i++)
		if (km->size_tab[i].thismod_addr == repladdr)
			return km->size_tab[i].size;
	return JMP32_INSN_SIZE;
}

/* The running copy of patch @p's old function, as run-pre matching found it. */
static int ksplice_find_old(struct ksplice_module *km,
			    const struct ksplice_patch *p,
			    const struct ksplice_match **mp, unsigned long *size)
{
	const struct ksplice_match *m;

	m = ksplice_runpre_function(km->helper, p->label, size);
	if (!m && ksplice_runpre_not_loaded(km->helper, p->label)) {
		pr_warn("%s: %s is neither in the kernel nor in a loaded module: load its module first\n",
			KSPLICE_ID, p->oldname);
		return ksplice_fail(km, KSPLICE_ABORT_NOT_LOADED);
	}
	if (!m) {
		pr_warn("%s: run-pre matching did not find %s\n", KSPLICE_ID,
			p->oldname);
		return ksplice_fail(km, KSPLICE_ABORT_NO_MATCH);
	}
	if (p->oldaddr && ksplice_run_addr(km, p->oldaddr) != m->addr) {
		pr_warn("%s: %s is at %pS, System.map says %pS\n", KSPLICE_ID,
			p->oldname, (void *)m->addr,
			(void *)ksplice_run_addr(km, p->oldaddr));
		return ksplice_fail(km, KSPLICE_ABORT_MAP_MISMATCH);
	}
	*mp = m;
	return 0;
}

/* The jmp rel32 from the patch site to the replacement, and the bytes it covers. */
static int ksplice_encode_jump(struct ksplice_module *km,
			       struct ksplice_patch_rt *rt)
{
	long rel = (long)(rt->repladdr - (rt->site + JMP32_INSN_SIZE));

	if (rel != (s32)rel)
		return ksplice_fail(km, KSPLICE_ABORT_BAD_ENCODING);
	__text_gen_insn(rt->jump, JMP32_INSN_OPCODE, (void *)rt->site,
			(void *)rt->repladdr, JMP32_INSN_SIZE);
	if (copy_from_kernel_nofault(rt->saved, (void *)rt->site,
				     JMP32_INSN_SIZE))
		return ksplice_fail(km, KSPLICE_ABORT_NO_MATCH);
	return 0;
}

static int ksplice_resolve_patch(struct ksplice_module *km, unsigned int i)
{
	const struct ksplice_patch *p = &km->patch_tab[i];
	struct ksplice_patch_rt *rt = &km->patch_rt[i];
	const struct ksplice_match *m;
	unsigned long size = 0;
	int ret;

	ret = ksplice_find_old(km, p, &m, &size);
	if (ret)
		return ret;
	rt->oldaddr = m->addr;
	rt->oldsize = size;
	/*
	 * The jump and the replacement's relocations point into the module:
	 * it must stay until this update is unloaded.
	 */
	if (m->mod) {
		__module_get(m->mod);
		rt->mod = m->mod;
		pr_info("%s: %s is in module %s\n", KSPLICE_ID, p->oldname,
			m->mod->name);
	}
	rt->oldhash = ksplice_hash(m->addr, size);
	/* Past the ftrace NOP, so ftrace can still trace the old entry. */
	rt->site = m->addr + m->entry_nop;
	if (m->entry_nop + JMP32_INSN_SIZE > size) {
		pr_warn("%s: %s is too short to patch\n", KSPLICE_ID, p->oldname);
		return ksplice_fail(km, KSPLICE_ABORT_NO_MATCH);
	}
	rt->repladdr = p->repladdr;
	rt->replsize = ksplice_repl_size(km, p->repladdr);
	return ksplice_encode_jump(km, rt);
}

/*
 * A function this update adds: one the primary carries (ksplice_sizes) and
 * does not patch in (ksplice_patches).  New code in another of the update's
 * objects calls it by its global name, which System.map may lack, or list
 * for an unrelated static function of that name elsewhere.
 */
static bool ksplice_own_function(const struct ksplice_module *km,
				 const char *label, unsigned long *addr)
{
	unsigned int i;

	for (i = 0; i < km->nr_patches; i++)
		if (!strcmp(km->patch_tab[i].label, label))
			return false;
	for (i = 0; i < km->nr_sizes; i++) {
		if (!strcmp(km->size_tab[i].label, label)) {
			*addr = km->size_tab[i].thismod_addr;
			return true;
		}
	}
	return false;
}

/*
 * The value of one of the primary's relocations: the update's own new
 * function of that label, else what run-pre matching saw at that label,
 * else the one System.map address.
 */
static int ksplice_reloc_value(struct ksplice_module *km, unsigned int i,
			       char *buf, unsigned long *value)
{
	const struct ksplice_reloc *r = &km->reloc_tab[i];
	const struct ksplice_symstate *st = &km->reloc_state[i];
	unsigned long v = 0;
	int ret;

	if (ksplice_own_function(km, r->label, value))
		return 0;
	ret = ksplice_runpre_lookup(km->helper, r->label, &v);
	if (ret == -EINVAL) {
		pr_warn("%s: run-pre matching saw several values of %s\n",
			KSPLICE_ID, r->symbol);
		return ksplice_fail(km, KSPLICE_ABORT_UNRESOLVED);
	}
	/* a patched module's own static symbol of a name the kernel has too */
	if (!ret && st->status == KSPLICE_SYM_RESOLVED && v != st->addr &&
	    !ksplice_module_symbol(km, buf, v, r->symbol)) {
		pr_warn("%s: %s is at %pS, System.map says %pS\n", KSPLICE_ID,
			r->symbol, (void *)v, (void *)st->addr);
		return ksplice_fail(km, KSPLICE_ABORT_MAP_MISMATCH);
	}
	if (ret && st->status != KSPLICE_SYM_RESOLVED) {
		pr_warn("%s: no value for %s (%s)\n", KSPLICE_ID, r->symbol,
			st->status == KSPLICE_SYM_MISSING ? "not in System.map" :
			"ambiguous, not seen by run-pre matching");
		return ksplice_fail(km, KSPLICE_ABORT_UNRESOLVED);
	}
	*value = ret ? st->addr : v;
	return 0;
}

static bool ksplice_fits(unsigned long v, unsigned int size, bool is_signed)
{
	long s = (long)v;

	switch (size) {
	case 1:
		return is_signed ? s == (s8)s : v <= U8_MAX;
	case 2:
		return is_signed ? s == (s16)s : v <= U16_MAX;
	case 4:
		return is_signed ? s == (s32)s : v <= U32_MAX;
	default:
		return true;
	}
}

/* Write relocation @i of the primary, with @buf for kallsyms. */
static int ksplice_write_reloc(struct ksplice_module *km,
			       const struct ksplice_kernel *k, unsigned int i,
			       char *buf)
{
	const struct ksplice_reloc *r = &km->reloc_tab[i];
	unsigned long site = r->section_addr + r->offset, v = 0;
	bool is_signed = r->flags & (KSPLICE_RELOC_SIGNED | KSPLICE_RELOC_PCREL);
	u8 bytes[8];
	int ret;

	ret = ksplice_reloc_value(km, i, buf, &v);
	if (ret)
		return ret;
	if (!strcmp(r->symbol, "__fentry__") &&
	    ksplice_is_ftrace_nop((const u8 *)(site - 1)))
		return 0;
	v += r->addend;
	if (r->flags & KSPLICE_RELOC_PCREL)
		v -= site;
	if (!ksplice_fits(v, r->size, is_signed)) {
		pr_warn("%s: %s+%#lx -> %s does not fit %u bytes\n",
			KSPLICE_ID, r->section, r->offset, r->symbol, r->size);
		return ksplice_fail(km, KSPLICE_ABORT_BAD_ENCODING);
	}
	memcpy(bytes, &v, sizeof(v));
	mutex_lock(k->text_mutex);
	k->text_poke((void *)site, bytes, r->size);
	mutex_unlock(k->text_mutex);
	return 0;
}

/*
 * Write the primary's relocations.  The replacement code is not reachable
 * yet, so text_poke outside stop_machine is enough.  A call to __fentry__
 * that ftrace already turned into a NOP at module load stays a NOP.
 */
static int ksplice_write_relocs(struct ksplice_module *km,
				const struct ksplice_kernel *k)
{
	unsigned int i;
	int ret = 0;
	char *buf;

	buf = kmalloc(KSYM_SYMBOL_LEN, GFP_KERNEL);
	if (!buf)
		return ksplice_fail(km, KSPLICE_ABORT_NOMEM);
	for (i = 0; i < km->nr_relocs && !ret; i++)
		ret = ksplice_write_reloc(km, k, i, buf);
	kfree(buf);
	return ret;
}

/*
 * The new code's jump entries (km->jump_start..jump_stop) are not in the
 * module's __jump_table: the loader would have linked them to their keys at
 * MODULE_STATE_COMING, before ksplice_write_relocs() wrote the keys.  With
 * the keys written, they go to the kernel's own module notifier,
 * jump_label_module_notify() (kernel/jump_label.c, static: imported), as
 * the loader would have done: under cpus_read_lock() and jump_label_lock()
 * it sorts and flags the entries in place (their section is writable) and
 * patches, through the text_poke machinery, the sites of keys that are
 * already enabled.  The code is not reachable yet.  Its MODULE_STATE_GOING
 * call at unload unlinks them again through mod->jump_entries.  The kernel
 * keeps one array per module, so a module with entries of its own is refused.
 */
static int ksplice_link_jumps(struct ksplice_module *km)
{
	unsigned long bytes = km->jump_stop - km->jump_start;
#ifdef CONFIG_JUMP_LABEL
	struct jump_entry *start = (struct jump_entry *)km->jump_start;
	unsigned int n = bytes / sizeof(*start);
	struct module *mod = km->owner;
	notifier_fn_t notify;
	unsigned long a;
	int ret;

	if (!n || (mod->num_jump_entries && mod->jump_entries == start))
		return 0;
	if (mod->num_jump_entries) {
		pr_warn("%s: the module has %u jump entries of its own\n",
			KSPLICE_ID, mod->num_jump_entries);
		return ksplice_fail(km, KSPLICE_ABORT_JUMP_LABEL);
	}
	if (ksplice_import(km, "jump_label_module_notify", &a))
		return ksplice_fail(km, KSPLICE_ABORT_UNRESOLVED);
	notify = (notifier_fn_t)a;
	mod->jump_entries = start;
	mod->num_jump_entries = n;
	ret = notifier_to_errno(notify(NULL, MODULE_STATE_COMING, mod));
	if (ret) {
		/* the notifier has unlinked what it had linked */
		mod->jump_entries = NULL;
		mod->num_jump_entries = 0;
		return ksplice_fail(km, KSPLICE_ABORT_NOMEM);
	}
	pr_info("%s: %u jump labels of the new code registered\n", KSPLICE_ID,
		n);
	return 0;
#else
	if (!bytes)
		return 0;
	pr_warn("%s: jump labels in a kernel without CONFIG_JUMP_LABEL\n",
		KSPLICE_ID);
	return ksplice_fail(km, KSPLICE_ABORT_JUMP_LABEL);
#endif
}

/* Drop the references on the patched functions' modules. */
static void ksplice_put_targets(struct ksplice_module *km)
{
	unsigned int i;

	for (i = 0; km->patch_rt && i < km->nr_patches; i++) {
		if (km->patch_rt[i].mod)
			module_put(km->patch_rt[i].mod);
		km->patch_rt[i].mod = NULL;
	}
}

/*
 * Everything the stop_machine step needs, done once per primary.  The
 * result (with the module references) is kept until the primary unloads:
 * later applies reuse the relocations written here.
 */
static int ksplice_prepare(struct ksplice_module *km,
			   const struct ksplice_kernel *k)
{
	unsigned int i;
	int ret;

	if (km->resolved)
		return 0;
	if (!km->helper)
		return ksplice_fail(km, KSPLICE_ABORT_NO_HELPER);
	if (km->mismatched || km->helper->mismatched)
		return ksplice_fail(km, KSPLICE_ABORT_MAP_MISMATCH);
	ret = ksplice_runpre(km, k->mod_syms);
	if (ret)
		return ret;
	for (i = 0; i < km->nr_patches && !ret; i++)
		ret = ksplice_resolve_patch(km, i);
	if (!ret)
		ret = ksplice_write_relocs(km, k);
	if (!ret)
		ret = ksplice_link_jumps(km);
	if (ret) {
		ksplice_put_targets(km);
		return ret;
	}
	km->resolved = true;
	return 0;
}

/* -- inside stop_machine ------------------------------------------------- */

static bool ksplice_in(unsigned long w, unsigned long start, unsigned long size)
{
	return w - start < size;
}

static bool ksplice_word_busy(const struct ksplice_module *km, unsigned long w,
			      bool reverse)
{
	unsigned int i;

	for (i = 0; i < km->nr_patches; i++) {
		const struct ksplice_patch_rt *rt = &km->patch_rt[i];

		if (ksplice_in(w, rt->oldaddr, rt->oldsize))
			return true;
		if (reverse && ksplice_in(w, rt->repladdr, rt->replsize))
			return true;
	}
	return false;
}

static bool ksplice_task_on_cpu(struct task_struct *t)
{
#ifdef CONFIG_SMP
	return READ_ONCE(t->on_cpu);
#else
	return t == current;
#endif
}

static void ksplice_note_busy(struct ksplice_stop *s, struct task_struct *t,
			      unsigned long word, unsigned long depth)
{
	s->busy_pid = t->pid;
	s->busy_word = word;
	s->busy_depth = depth;
	s->busy_caller = t == s->caller;
	memcpy(s->busy_comm, t->comm, sizeof(s->busy_comm));
}

/* A reliable unwinder (ORC, frame pointers) sees only live frames. */
#define KSPLICE_PRECISE_UNWIND \
	(IS_ENABLED(CONFIG_UNWINDER_ORC) || IS_ENABLED(CONFIG_UNWINDER_FRAME_POINTER))

/*
 * Unwind a task that is not running: every frame's return address and
 * every interrupted context's instruction pointer.  Returns -1 when the
 * unwinder gave up, so the caller falls back to scanning.
 */
static int ksplice_unwind_busy(struct ksplice_stop *s, struct task_struct *t)
{
	struct unwind_state state;
	unsigned long addr;

	for (unwind_start(&state, t, NULL, NULL); !unwind_done(&state);
	     unwind_next_frame(&state)) {
		addr = unwind_get_return_address(&state);
		if (!addr)
			break;
		if (ksplice_word_busy(s->km, addr, s->reverse)) {
			ksplice_note_busy(s, t, addr, 0);
			return 1;
		}
	}
	return unwind_error(&state) ? -1 : 0;
}

/* Where scanning @t's stack starts: see ksplice_task_busy(). */
static unsigned long *ksplice_scan_start(const struct ksplice_stop *s,
					 struct task_struct *t,
					 unsigned long *stack, unsigned long *end)
{
	unsigned long *sp;

	if (t == s->caller)
		sp = (unsigned long *)s->caller_sp;
	else if (t == current)
		sp = (unsigned long *)current_stack_pointer;
	else if (ksplice_task_on_cpu(t))
		sp = stack;
	else
		sp = (unsigned long *)t->thread.sp;
	if (sp < stack || sp >= end)
		sp = stack;
	return sp;
}

static bool ksplice_scan_busy(struct ksplice_stop *s, struct task_struct *t,
			      unsigned long *stack)
{
	unsigned long *end = stack + THREAD_SIZE / sizeof(*stack);
	unsigned long *sp = ksplice_scan_start(s, t, stack, end);

	for (; sp < end; sp++) {
		unsigned long w = READ_ONCE_NOCHECK(*sp);

		if (ksplice_word_busy(s->km, w, s->reverse)) {
			if (t == s->caller && !KSPLICE_PRECISE_UNWIND)
				return false;
			ksplice_note_busy(s, t, w, (end - sp) * sizeof(*sp));
			return true;
		}
	}
	return false;
}

/*
 * Is @t inside the code being replaced?  With a reliable unwinder, its
 * frames say so exactly.  Otherwise (and when unwinding fails) its kernel
 * stack is scanned from the saved stack pointer up for any word pointing
 * into that code: a saved instruction pointer, a return address or an
 * interrupted context.  Tasks running right now are the stop_machine
 * threads; their whole stack is scanned.  Scanning sees stale words in
 * live frames too; the task that asked for the operation has them from
 * its earlier system calls, so without an unwinder it is scanned only
 * above where it entered ksplice -- and not at all (it is in the sysfs
 * write path, which is not worth refusing an update for) when that still
 * finds something.
 */
static bool ksplice_task_busy(struct ksplice_stop *s, struct task_struct *t)
{
	unsigned long *stack = task_stack_page(t);
	bool running = t == current || ksplice_task_on_cpu(t);

	if (!stack || !refcount_read(&t->stack_refcount))
		return false;
	if (KSPLICE_PRECISE_UNWIND && (!running || t == s->caller)) {
		int ret = ksplice_unwind_busy(s, t);

		if (ret >= 0)
			return ret;
	}
	return ksplice_scan_busy(s, t, stack);
}

/*
 * Every task's stack, and every online CPU's idle task, which
 * for_each_process_thread() does not list (its stack holds the idle loop).
 * An offline CPU's idle task starts afresh when the CPU comes up again
 * (and hotplug is held), so it has no frame to return to.
 */
static bool ksplice_tasks_busy(struct ksplice_stop *s)
{
	struct task_struct *g, *t;
	unsigned int cpu;
	bool busy = false;

	s->tasks_checked = 0;
	s->idle_checked = 0;
	rcu_read_lock();
	for_each_process_thread(g, t) {
		s->tasks_checked++;
		if (ksplice_task_busy(s, t)) {
			busy = true;
			break;
		}
	}
	for_each_online_cpu(cpu) {
		if (busy)
			break;
		t = s->k->idle_task(cpu);
		if (!t)
			continue;
		s->tasks_checked++;
		s->idle_checked++;
		busy = ksplice_task_busy(s, t);
	}
	rcu_read_unlock();
	return busy;
}

/*
 * The die notifier: an int3 at one of the sites while they are written
 * (an NMI on any CPU, or an interrupt on the master) continues in the
 * replacement.  Both the old code and the replacement are loaded and
 * correct during apply and reverse, so either is a valid place to go; the
 * half-written site is not.  Runs in NMI context: reads only what stays
 * fixed during the operation.
 */
static int ksplice_int3_notify(struct notifier_block *nb, unsigned long val,
			       void *data)
{
	struct ksplice_stop *s = container_of(nb, struct ksplice_stop, nb);
	struct die_args *args = data;
	struct pt_regs *regs = args->regs;
	unsigned long ip;
	unsigned int i;

	if (val != DIE_INT3 || !regs || user_mode(regs) || !READ_ONCE(s->poking))
		return NOTIFY_DONE;
	ip = regs->ip - INT3_INSN_SIZE;
	for (i = 0; i < s->km->nr_patches; i++) {
		const struct ksplice_patch_rt *rt = &s->km->patch_rt[i];

		if (ip == rt->site) {
			regs->ip = rt->repladdr;
			atomic_inc(&s->int3_hits);
			return NOTIFY_STOP;
		}
	}
	return NOTIFY_DONE;
}

/* A probe on the notifier would trap again inside the trap. */
NOKPROBE_SYMBOL(ksplice_int3_notify);

/*
 * Make every online CPU serialize its instruction stream: the master bumps
 * the phase and serializes, each other CPU (spinning in ksplice_stop_fn)
 * serializes and acknowledges.  A CPU in an NMI acknowledges only when the
 * NMI is over, so after this no CPU still runs code it started before.
 */
static void ksplice_sync_all(struct ksplice_stop *s)
{
	atomic_set(&s->acks, 0);
	atomic_inc_return_release(&s->phase);
	sync_core();
	while (atomic_read_acquire(&s->acks) < s->others)
		cpu_relax();
}

/* Write @bytes (JMP32_INSN_SIZE) over every site, int3 first. */
static void ksplice_write_sites(struct ksplice_stop *s)
{
	const u8 int3 = INT3_INSN_OPCODE;
	struct ksplice_module *km = s->km;
	unsigned int i;

	WRITE_ONCE(s->poking, true);
	for (i = 0; i < km->nr_patches; i++)
		s->k->text_poke((void *)km->patch_rt[i].site, &int3, 1);
	ksplice_sync_all(s);
	for (i = 0; i < km->nr_patches; i++) {
		const struct ksplice_patch_rt *rt = &km->patch_rt[i];
		const u8 *bytes = s->reverse ? rt->saved : rt->jump;

		s->k->text_poke((void *)rt->site + 1, bytes + 1,
				JMP32_INSN_SIZE - 1);
	}
	ksplice_sync_all(s);
	for (i = 0; i < km->nr_patches; i++) {
		const struct ksplice_patch_rt *rt = &km->patch_rt[i];
		const u8 *bytes = s->reverse ? rt->saved : rt->jump;

		s->k->text_poke((void *)rt->site, bytes, 1);
	}
	ksplice_sync_all(s);
	WRITE_ONCE(s->poking, false);
}

/*
 * The master CPU's work: check, then write every jump (or saved bytes).
 * The caller holds km->lock and waits in stop_machine, so recording the
 * abort cause here is safe.
 */
static int ksplice_stopped_work(struct ksplice_stop *s)
{
	struct ksplice_module *km = s->km;
	unsigned int i;

	if (ksplice_tasks_busy(s))
		return ksplice_fail(km, KSPLICE_ABORT_CODE_BUSY);
	for (i = 0; i < km->nr_patches; i++) {
		const struct ksplice_patch_rt *rt = &km->patch_rt[i];
		const u8 *expect = s->reverse ? rt->jump : rt->saved;

		if (memcmp((void *)rt->site, expect, JMP32_INSN_SIZE))
			return ksplice_fail(km, KSPLICE_ABORT_CODE_CHANGED);
	}
	ksplice_write_sites(s);
	return 0;
}

/*
 * Runs on every online CPU with interrupts off.  The first online CPU does
 * the work; the others wait for it, serializing whenever it asks (see
 * ksplice_sync_all()), and serialize once more before leaving.
 */
static int ksplice_stop_fn(void *data)
{
	struct ksplice_stop *s = data;

	if (smp_processor_id() == cpumask_first(cpu_online_mask)) {
		u64 t0 = rdtsc_ordered();

		s->ret = ksplice_stopped_work(s);
		s->cycles = rdtsc_ordered() - t0;
		atomic_set_release(&s->done, 1);
	} else {
		int seen = 0;

		while (!atomic_read_acquire(&s->done)) {
			int phase = atomic_read_acquire(&s->phase);

			if (phase != seen) {
				sync_core();
				seen = phase;
				atomic_inc_return_release(&s->acks);
			}
			cpu_relax();
		}
	}
	sync_core();
	return 0;
}

/*
 * TSC cycles to ns at the rate the kernel calibrated; fallback_ns when it
 * has none (tsc_khz is 0 when calibration failed, e.g. under qemu's TCG).
 */
static u64 ksplice_cycles_ns(u64 cycles, u64 fallback_ns)
{
	if (!tsc_khz)
		return fallback_ns;
	return div_u64(cycles * 1000000ULL, tsc_khz);
}

/* One stop_machine call. */
static int ksplice_stop_once(struct ksplice_stop *s)
{
	const struct ksplice_kernel *k = s->k;
	u64 t0, c0, c1, t1;
	int ret;

	atomic_set(&s->done, 0);
	atomic_set(&s->phase, 0);
	s->ret = 0;
	cpus_read_lock();
	mutex_lock(k->text_mutex);
	s->others = num_online_cpus() - 1;
	t0 = ktime_get_ns();
	c0 = rdtsc_ordered();
#ifdef CONFIG_SMP
	ret = k->stop_machine_cpuslocked(ksplice_stop_fn, s, cpu_online_mask);
#else
	ret = stop_machine_cpuslocked(ksplice_stop_fn, s, cpu_online_mask);
#endif
	c1 = rdtsc_ordered();
	t1 = ktime_get_ns();
	mutex_unlock(k->text_mutex);
	cpus_read_unlock();
	s->km->pause_ns = ksplice_cycles_ns(c1 - c0, t1 - t0);
	s->km->stopped_ns = ksplice_cycles_ns(s->cycles, 0);
	s->km->pause_max_ns = max(s->km->pause_max_ns, s->km->pause_ns);
	s->km->tasks_checked = s->tasks_checked;
	s->km->idle_checked = s->idle_checked;
	if (ret)
		return ksplice_fail(s->km, KSPLICE_ABORT_CODE_BUSY);
	return s->ret;
}

static int ksplice_stop_retry(struct ksplice_module *km,
			      const struct ksplice_kernel *k, bool reverse)
{
	struct ksplice_stop s = {
		.km = km,
		.k = k,
		.reverse = reverse,
		.caller = current,
		.caller_sp = current_stack_pointer,
	};
	int ret = 0;

	s.nb.notifier_call = ksplice_int3_notify;
	s.nb.priority = INT_MAX;
	ret = register_die_notifier(&s.nb);
	if (ret)
		return ksplice_fail(km, KSPLICE_ABORT_NOMEM);
	for (km->tries = 1; km->tries <= KSPLICE_TRIES; km->tries++) {
		ret = ksplice_stop_once(&s);
		if (!ret || km->abort != KSPLICE_ABORT_CODE_BUSY)
			break;
		pr_info("%s: try %u: %s[%d] is inside the code (%pS at stack top-%lu%s)\n",
			KSPLICE_ID, km->tries, s.busy_comm, s.busy_pid,
			(void *)s.busy_word, s.busy_depth,
			s.busy_caller ? ", caller" : "");
		if (km->tries < KSPLICE_TRIES)
			msleep(KSPLICE_RETRY_MS);
	}
	km->tries = min(km->tries, (unsigned int)KSPLICE_TRIES);
	/*
	 * Waits for every die-notifier call in progress (RCU), so no NMI is
	 * still in ksplice_int3_notify() when @s goes out of scope.
	 */
	unregister_die_notifier(&s.nb);
	km->int3_hits += atomic_read(&s.int3_hits);
	return ret;
}

/* -- entry points (km->lock held) ---------------------------------------- */

/* Log the outcome of an operation; @ret is 0 or what ksplice_fail() gave. */
static int ksplice_finish(struct ksplice_module *km, int ret,
			  enum ksplice_stage ok, const char *what)
{
	if (ret) {
		if (km->stage != KSPLICE_STAGE_APPLIED)
			km->stage = KSPLICE_STAGE_ABORTED;
		pr_warn("%s: %s aborted: %s\n", KSPLICE_ID, what,
			ksplice_abort_name(km->abort));
		return ret;
	}
	km->abort = KSPLICE_ABORT_NONE;
	km->stage = ok;
	km->operations++;
	pr_info("%s: %s, %u functions, stop_machine %llu us (work %llu us), try %u\n",
		KSPLICE_ID, what, km->nr_patches, div_u64(km->pause_ns, 1000),
		div_u64(km->stopped_ns, 1000), km->tries);
	return 0;
}

/**
 * ksplice_apply() - Apply the update: the sysfs command "apply".
 * @km: the primary, its lock held
 *
 * The first apply needs the helper: run-pre matching, resolution of the
 * old functions and of the replacement code's relocations.  Later applies
 * reuse that.  The jumps are then written under stop_machine once no task
 * is inside an old function, retrying a few times.  An abort leaves every
 * byte of the kernel as it was.
 *
 * Return: 0, or a negative errno with the abort cause in @km->abort.
 */
int ksplice_apply(struct ksplice_module *km)
{
	struct ksplice_kernel k = {};
	int ret;

	km->abort = KSPLICE_ABORT_NONE;
	if (km->stage == KSPLICE_STAGE_APPLIED)
		return ksplice_fail(km, KSPLICE_ABORT_ALREADY_APPLIED);
	ret = ksplice_get_imports(km, &k);
	if (ret)
		return ksplice_finish(km, ret, 0, "apply");
	if (!km->patch_rt) {
		km->patch_rt = kcalloc(km->nr_patches ? km->nr_patches : 1,
				       sizeof(*km->patch_rt), GFP_KERNEL);
		if (!km->patch_rt)
			return ksplice_finish(km, ksplice_fail(km, KSPLICE_ABORT_NOMEM),
					      0, "apply");
	}
	ret = ksplice_prepare(km, &k);
	if (!ret)
		ret = ksplice_stop_retry(km, &k, false);
	if (!ret)
		__module_get(km->owner);
	return ksplice_finish(km, ret, KSPLICE_STAGE_APPLIED, "applied");
}

/**
 * ksplice_reverse() - Reverse the update: the sysfs command "reverse".
 * @km: the primary, its lock held
 *
 * Writes the saved bytes back under stop_machine once no task is inside
 * an old function or a replacement, retrying a few times.
 *
 * Return: 0, or a negative errno with the abort cause in @km->abort.
 */
int ksplice_reverse(struct ksplice_module *km)
{
	struct ksplice_kernel k = {};
	int ret;

	km->abort = KSPLICE_ABORT_NONE;
	if (km->stage != KSPLICE_STAGE_APPLIED)
		return ksplice_fail(km, KSPLICE_ABORT_NOT_APPLIED);
	ret = ksplice_get_imports(km, &k);
	if (ret)
		return ksplice_finish(km, ret, 0, "reverse");
	ret = ksplice_stop_retry(km, &k, true);
	if (!ret)
		module_put(km->owner);
	return ksplice_finish(km, ret, KSPLICE_STAGE_REVERSED, "reversed");
}

/**
 * ksplice_patch_free() - Free the primary's patching state.
 * @km: the primary, no longer applied
 *
 * Drops the references on the patched functions' modules.
 */
void ksplice_patch_free(struct ksplice_module *km)
{
	ksplice_put_targets(km);
	kfree(km->patch_rt);
	km->patch_rt = NULL;
}
