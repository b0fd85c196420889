#include "kernelish.h"
int f(int x) { WARN_ON(x == 77777); return x + 1; }
int g(int x) { WARN_ON(x == -77777); return x + 2; }
