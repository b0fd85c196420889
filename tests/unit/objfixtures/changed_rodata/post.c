#include "kernelish.h"
static const int table[8] = {1, 2, 3, 5, 8, 13, 21, 35};
static const int other[8] = {2, 4, 6, 8, 10, 12, 14, 16};
int f(int x) { return table[x & 7] * x; }
int g(int x) { return other[x & 7] + x; }
