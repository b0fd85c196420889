/* Kernel tables in two functions: keep-primary keeps only the kept one's entries. */
#include "kernelish.h"
#define EX_ENTRY(insn, fixup) ".pushsection __ex_table,\"a\"\n .balign 4\n" \
	" .long " #insn " - .\n .long " #fixup " - .\n .long 0\n .popsection\n"
#define ALT(tag) asm volatile("661: nop; nop; nop\n662:\n" \
	".pushsection .altinstructions,\"a\"\n .long 661b - .\n .long 663f - .\n" \
	" .word 3\n .byte 662b-661b\n .byte 664f-663f\n .popsection\n" \
	".pushsection .altinstr_replacement,\"ax\"\n663: mov $" #tag ", %%eax\n664:\n" \
	".popsection" ::: "eax")
#define EXT() asm volatile("1: nop\n2:\n" EX_ENTRY(1b, 2b))
int keep_me(int x) { ALT(1); EXT(); WARN_ON(x == 42); return x + 1; }
int drop_me(int x) { ALT(2); EXT(); WARN_ON(x == 43); return x + 2; }
