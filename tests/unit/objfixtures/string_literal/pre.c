#include "kernelish.h"
int f(int x) { return printk("hello world %d\n", x) + x; }
int g(int x) { return printk("unchanged %d\n", x); }
