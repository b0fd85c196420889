#include "kernelish.h"
int sw(int x)
{
	switch (x) {
	case 0: return printk("zero");
	case 1: return printk("one %d", x * 3);
	case 2: return x * 7;
	case 3: return printk("three");
	case 4: return x + printk("four");
	case 5: return 99;
	case 6: return x * x - 1;
	default: return -1;
	}
}
int other(int x) { return x + 1; }
