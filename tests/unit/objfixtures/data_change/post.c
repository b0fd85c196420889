#include "kernelish.h"
int counter = 2;
int f(int x) { return counter + x; }
