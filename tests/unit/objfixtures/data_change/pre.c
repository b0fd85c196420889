#include "kernelish.h"
int counter = 1;
int f(int x) { return counter + x; }
