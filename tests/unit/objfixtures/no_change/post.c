#include "kernelish.h"
/* comment only */ int f(int x) { return printk("no change %d\n", x); }
static const int t[4] = {4, 3, 2, 1};
int g(int x) { return t[x & 3]; }
