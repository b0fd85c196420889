#include "kernelish.h"
int f(int x) { return printk("value %d %d\n", x, 5); }
