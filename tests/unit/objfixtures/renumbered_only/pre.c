#include "kernelish.h"
int f(int x) { return printk("f %d\n", x); }
int g(int x) { static int n; n += x; return n + printk("g\n"); }
