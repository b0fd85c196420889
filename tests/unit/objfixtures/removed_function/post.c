#include "kernelish.h"
int f(int x) { return (x ^ 0x55) + 3; }
int g(int x) { return x - 3; }
