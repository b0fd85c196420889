/* __bug_table entries in both x86-64 layouts (include/asm-generic/bug.h struct
 * bug_entry with relative pointers): 12 bytes with -DBUG_VERBOSE (address,
 * file, line, flags), 8 bytes without (address, flags, padding).  Each site
 * has its own flags word so a test can tell the entries apart.  -DPOST
 * changes one function. */
#ifdef BUG_VERBOSE
#define BUG_ENTRY_SIZE 12
#define BUG_FIELDS(flags) "\t.long %c0 - .\n\t.word %c1\n\t.word " #flags "\n"
#define BUG_ARGS : : "i" (__FILE__), "i" (__LINE__), "i" (BUG_ENTRY_SIZE)
#define BUG_ORG "\t.org 2b+%c2\n"
#else
#define BUG_ENTRY_SIZE 8
#define BUG_FIELDS(flags) "\t.word " #flags "\n"
#define BUG_ARGS : : "i" (BUG_ENTRY_SIZE)
#define BUG_ORG "\t.org 2b+%c0\n"
#endif
#define WARN_SITE(flags)						\
	asm volatile("1:\t.byte 0x0f, 0x0b\n"				\
		     ".pushsection __bug_table,\"aw\"\n"		\
		     "2:\t.long 1b - .\n"				\
		     BUG_FIELDS(flags)					\
		     BUG_ORG						\
		     ".popsection" BUG_ARGS)
#define WARN_IF(c, flags) do { if (__builtin_expect(!!(c), 0)) WARN_SITE(flags); } while (0)

int warn_a(int x) { WARN_IF(x == 1, 0x0201); return x * 3; }
#ifdef POST
int warn_b(int x) { WARN_IF(x == 2, 0x0302); WARN_IF(x == 3, 0x0403); return x + 2; }
#else
int warn_b(int x) { WARN_IF(x == 2, 0x0302); WARN_IF(x == 3, 0x0403); return x + 1; }
#endif
int plain(int x) { return x - 1; }
