#include "kernelish.h"
static noinline int clamp(int x) { asm(""); return x > 5 ? 5 : x; }
int f(int x) { return clamp(x) + 1; }
int g(int x) { return x * x; }
