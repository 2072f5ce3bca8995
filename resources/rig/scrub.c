/*
 * rig-scrub: writes once to every page of ANON_MIB of anonymous memory (transparent hugepages,
 * as a VMM's guest RAM gets) and of HUGE_MIB of the hugetlbfs pool, then frees it all.
 *
 * Why: the rig host runs under QEMU's software emulation (TCG), which translates the code it
 * runs by physical page. A guest that has run leaves translated code on the rig host's pages
 * that held its kernel, and the next write to such a page is slow: TCG first throws away the
 * translations on it. The kernel frees a finished VM's RAM and hands the same pages to the next
 * VMM, so without this the next VMM's kernel load, DMA pin and guest boot pay for the previous
 * guest (measured: a 512 MiB guest's kernel load took 0.3 s on clean pages and 1.2-5 s after
 * other guests; docs/rig.md, "Timings that drift from run to run"). Run between timed runs, this
 * takes those pages first and leaves them clean. On real hardware there is no such cost.
 *
 * Usage: rig-scrub ANON_MIB [HUGE_MIB]. Prints "RIG-SCRUB=... in S s" and exits 0; on an error
 * it prints "RIG-SCRUB=failed: ..." and exits 1.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static int fail(const char *what)
{
	printf("RIG-SCRUB=failed: %s: %s\n", what, strerror(errno));
	return 1;
}

/* Touches every 4 KiB page of a fresh mapping of `mib` MiB, then unmaps it; 0 when done. */
static int scrub(size_t mib, int flags, int advice)
{
	size_t len = mib << 20;
	if (len == 0)
		return 0;
	volatile char *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
				MAP_PRIVATE | MAP_ANONYMOUS | flags, -1, 0);
	if (p == MAP_FAILED)
		return -1;
	if (advice)
		madvise((void *)p, len, advice);
	for (size_t off = 0; off < len; off += 4096)
		p[off] = 1;
	munmap((void *)p, len);
	return 0;
}

static int parse_mib(const char *arg, size_t *mib)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(arg, &end, 10);
	if (errno || end == arg || *end || v > (1ULL << 30))
		return -1;
	*mib = v;
	return 0;
}

int main(int argc, char **argv)
{
	size_t anon = 0, huge = 0;
	if (argc < 2 || argc > 3 || parse_mib(argv[1], &anon) ||
	    (argc == 3 && parse_mib(argv[2], &huge))) {
		errno = EINVAL;
		return fail("usage: rig-scrub ANON_MIB [HUGE_MIB]");
	}
	struct timespec start, end;
	clock_gettime(CLOCK_MONOTONIC, &start);
	if (scrub(anon, 0, MADV_HUGEPAGE))
		return fail("anonymous memory");
	if (scrub(huge, MAP_HUGETLB, 0))
		return fail("hugetlbfs pool (fewer free hugepages than asked?)");
	clock_gettime(CLOCK_MONOTONIC, &end);
	printf("RIG-SCRUB=%zu MiB anonymous, %zu MiB hugetlbfs in %.2f s\n", anon, huge,
	       (double)(end.tv_sec - start.tv_sec) + (end.tv_nsec - start.tv_nsec) / 1e9);
	return 0;
}
