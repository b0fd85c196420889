#include "kernelish.h"
static noinline int helper(int x) { asm(""); return x + 11; }
int api_a(int x) { return helper(x) * 2; }
