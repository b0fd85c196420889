#include "kernelish.h"
int a(int x) { static int count; count += x; return count; }
int b(int x) { static int count; count += 2 * x; return count; }
