/* A change to running code and to __init code that has run and been freed. */
#include "kernelish.h"
extern int setup_value(int);
int g(int x) { return x * 3; }
__attribute__((section(".init.text"))) int my_setup(void) { return setup_value(1); }
