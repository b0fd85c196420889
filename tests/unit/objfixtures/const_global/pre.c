/* A global const table: other objects read the running copy. */
#include "kernelish.h"
const int shared_table[4] = { 1, 2, 3, 4 };
int pick(int x) { return shared_table[x & 3]; }
