#include "kernelish.h"
int z(int x) { static int count; count -= x; return count; }
int a(int x) { static int count; count += x; return count; }
int b(int x) { static int count; count += 3 * x; return count; }
