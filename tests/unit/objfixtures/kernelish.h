/* Just enough of the kernel's x86-64 macros to make kernel-shaped objects. */
#ifndef KERNELISH_H
#define KERNELISH_H
struct bug_entry {
	int bug_addr_disp;
	int file_disp;
	unsigned short line;
	unsigned short flags;
};
#define __WARN_FLAGS(flags)						\
	asm volatile("1:\t.byte 0x0f, 0x0b\n"				\
		     ".pushsection __bug_table,\"aw\"\n"		\
		     "2:\t.long 1b - .\n"				\
		     "\t.long %c0 - .\n"				\
		     "\t.word %c1\n"					\
		     "\t.word %c2\n"					\
		     "\t.org 2b+%c3\n"					\
		     ".popsection"					\
		     : : "i" (__FILE__), "i" (__LINE__),		\
		     "i" (flags), "i" (sizeof(struct bug_entry)))
#define WARN_ON(c) ({ int __r = !!(c); if (__builtin_expect(__r, 0)) __WARN_FLAGS(1 << 1); \
		      __builtin_expect(__r, 0); })
#define noinline __attribute__((noinline))
#define __cold __attribute__((cold))
#define unlikely(x) __builtin_expect(!!(x), 0)
extern int printk(const char *fmt, ...);
extern void __might_sleep(const char *file, int line);
#define might_sleep() __might_sleep(__FILE__, __LINE__)
extern void report_error(int code) __cold;
#endif
