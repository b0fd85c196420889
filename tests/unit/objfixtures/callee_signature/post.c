#include "kernelish.h"
static noinline int helper(int a, int b) { asm(""); return a * 3 + b; }
int f(int x) { return helper(x, x >> 1) + 1; }
int g(int x) { return x + 9; }
