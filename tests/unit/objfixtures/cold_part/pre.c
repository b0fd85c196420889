#include "kernelish.h"
int f(int x)
{
	if (unlikely(x > 1000)) {
		report_error(x);
		printk("value %d too big\n", x);
		return -1;
	}
	return x * 4 + printk("ok %d\n", x);
}
