#include "kernelish.h"
static inline int scale(int x) { return x * 5 + 3; }
int f(int x) { return scale(x) + 1; }
int g(int x) { return x + 100; }
