#include "kernelish.h"
static noinline int old_helper(int x) { asm(""); return x ^ 0x55; }
int f(int x) { return old_helper(x) + 2; }
int g(int x) { return x - 3; }
