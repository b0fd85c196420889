/* a new comment
 * shifts every line */
#include "kernelish.h"
int f(int x) { WARN_ON(x == 77777); return x + 1; }
int g(int x) { might_sleep(); return x + 2; }
int h(int x) { return printk("at line %d: %d\n", __LINE__, x); }
int k(int x) { return x + 4; }
