#include "kernelish.h"
int f(int x) { return x * 2 + 1; }
int g(int x) { return x - 7; }
