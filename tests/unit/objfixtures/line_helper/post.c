/* A file's own (function, line) helper, as arch/x86/kernel/hpet.c hpet_print_config(). */
#include "kernelish.h"
__cold noinline void _print_config(const char *function, int line)
{
	printk("%s:%d\n", function, line);
	printk("more\n");
}
#define print_config() _print_config(__func__, __LINE__)
int set_state(int x) { print_config(); return x + 1; }
int resume(int x) { print_config(); return x + 2; }
