#include "kernelish.h"
static noinline int helper(int a) { asm(""); return a * 3; }
int f(int x) { return helper(x) + 1; }
int g(int x) { return x + 9; }
