/* Kernel tables whose entries need more than the kept code: what keep-primary
 * must carry for the module loader, and what it must refuse. */
#include "kernelish.h"
struct static_key { int enabled; };
extern struct static_key ext_key;
static struct static_key local_key __attribute__((used));
extern void slow_fn(void);
extern void fast_fn(void);
extern void other_fn(void);
static noinline __attribute__((used)) void local_fn(void) { asm volatile(""); }
void fixup_elsewhere(void) { asm volatile(""); }
#define ALT_CALL(orig, repl) asm volatile("661: call " #orig "\n662:\n" \
	".pushsection .altinstructions,\"a\"\n .long 661b - .\n .long 663f - .\n" \
	" .word 3\n .byte 662b-661b\n .byte 664f-663f\n .popsection\n" \
	".pushsection .altinstr_replacement,\"ax\"\n663: call " #repl "\n664:\n" \
	".popsection" ::: "memory")
#define JUMP(key, label) asm goto("1: .byte 0x0f,0x1f,0x44,0x00,0x00\n" \
	".pushsection __jump_table, \"aw\"\n .balign 8\n .long 1b - .\n" \
	" .long %l[" #label "] - .\n .quad " #key " - .\n .popsection" : : : : label)
#define EX_TO(fixup) asm volatile("1: nop\n" \
	".pushsection __ex_table,\"a\"\n .balign 4\n .long 1b - .\n .long " #fixup " - .\n" \
	" .long 0\n .popsection\n")
#define STATIC_CALL(name) asm volatile("1: call __SCT__" #name "\n" \
	".pushsection .static_call_sites,\"a\"\n .long 1b - .\n .long __SCK__" #name " - .\n" \
	".popsection" ::: "memory")
int alt_exported(int x) { ALT_CALL(slow_fn, fast_fn); return x + 1; }
int alt_other(int x) { ALT_CALL(slow_fn, other_fn); return x + 2; }
int alt_local(int x) { ALT_CALL(slow_fn, local_fn); return x + 3; }
int jump_extern(int x) { JUMP(ext_key, yes); return x; yes: return -x; }
int jump_local(int x) { JUMP(local_key, yes); return x; yes: return -x; }
int ex_elsewhere(int x) { EX_TO(fixup_elsewhere); return x + 4; }
int static_call_user(int x) { STATIC_CALL(tp_func_demo); return x + 5; }
extern char cpu_caps[];
#define CPU_HAS(yes, no) asm goto("661: jmp 6f\n662:\n" \
	".pushsection .altinstructions,\"a\"\n .long 661b - .\n .long 663f - .\n" \
	" .word 3\n .byte 662b-661b\n .byte 664f-663f\n .popsection\n" \
	".pushsection .altinstr_replacement,\"ax\"\n663:\n664:\n.popsection\n" \
	".pushsection .altinstr_aux,\"ax\"\n6: testb $1, cpu_caps(%%rip)\n" \
	" jnz %l[" #yes "]\n jmp %l[" #no "]\n.popsection" : : : : yes, no)
int cpu_has_user(int x) { CPU_HAS(yes, no); no: return x; yes: return -x; }
int cpu_has_other(int x) { CPU_HAS(yes, no); no: return x + 1; yes: return -x - 1; }
/* a return through the thunk inside an alternative's replacement, with its .return_sites
 * entry (objtool lists those too; apply_returns() runs before apply_alternatives()) */
#define ALT_RET() asm volatile("661: .byte 0x90,0x90,0x90,0x90,0x90\n662:\n" \
	".pushsection .altinstructions,\"a\"\n .long 661b - .\n .long 663f - .\n" \
	" .word 3\n .byte 662b-661b\n .byte 664f-663f\n .popsection\n" \
	".pushsection .altinstr_replacement,\"ax\"\n663: jmp __x86_return_thunk\n664:\n" \
	".popsection\n.pushsection .return_sites,\"a\"\n .long 663b - .\n .popsection" \
	::: "memory")
int alt_ret(int x) { ALT_RET(); return x + 6; }
int alt_ret_other(int x) { ALT_RET(); return x + 7; }
