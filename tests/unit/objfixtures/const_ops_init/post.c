/* A const operations table gaining an .open: its address was registered at init. */
#include "kernelish.h"
struct fops { int (*read)(int); int (*open)(int); };
extern void register_fops(const struct fops *f);
static int my_read(int x) { return x + 1; }
static int my_open(int x) { return x - 1; }
static const struct fops my_fops = { .read = my_read, .open = my_open };
__attribute__((section(".init.text"))) int my_init(void) { register_fops(&my_fops); return my_open(0); }
