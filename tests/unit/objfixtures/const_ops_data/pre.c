/* A const table of plain values that another const structure points at. */
#include "kernelish.h"
struct limits { int lo, hi; };
struct device { const struct limits *lim; };
static const struct limits my_limits = { 1, 10 };
static const struct device my_dev = { .lim = &my_limits };
const struct device *get_dev(void) { return &my_dev; }
