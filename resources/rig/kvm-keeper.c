/*
 * rig-kvm-keeper: holds one KVM VM with one vCPU (an in-kernel local APIC that is never enabled)
 * for the life of the rig host, and never runs it.
 *
 * Why: KVM counts VMs and software-disabled local APICs in static keys (preempt_notifier_key,
 * apic_sw_disabled). Every VM that starts or stops while no other VM exists flips them, and the
 * kernel then patches its own text live (text_poke_bp: an int3 on each site, IPIs, the rest of
 * the instruction). Under QEMU's software emulation that cross-CPU code patching is where the
 * rig host has been seen to stall: one CPU looping in the int3 entry, the other spinning on a lock,
 * both with interrupts off (docs/rig.md, "A rig host that stalls"). While this process holds
 * one of each, a VMM's start and exit move the counts without patching anything.
 *
 * Prints "RIG-KVM-KEEPER=ready pid=N" once the vCPU exists and exits 0, leaving a child that
 * holds the VM's file descriptors and sleeps until the rig host powers off; so the caller
 * waits only for the VM to exist. On an error it prints "RIG-KVM-KEEPER=failed: ..." and exits
 * 1, and host-init.sh fails the rig run.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

static int fail(const char *what)
{
	printf("RIG-KVM-KEEPER=failed: %s: %s\n", what, strerror(errno));
	fflush(stdout);
	return 1;
}

int main(void)
{
	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		return fail("open /dev/kvm");
	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0)
		return fail("KVM_CREATE_VM");
	/* Without an in-kernel irqchip the vCPU gets no local APIC, and apic_sw_disabled stays 0. */
	if (ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0)
		return fail("KVM_CREATE_IRQCHIP");
	if (ioctl(vm, KVM_CREATE_VCPU, 0) < 0)
		return fail("KVM_CREATE_VCPU");
	/* The VM lives as long as a file descriptor refers to it: the child's copies. */
	pid_t child = fork();
	if (child < 0)
		return fail("fork");
	if (child > 0) {
		printf("RIG-KVM-KEEPER=ready pid=%d\n", (int)child);
		return 0;
	}
	/* Let go of the caller's output, so that $(rig-kvm-keeper) returns. */
	int null = open("/dev/null", O_RDWR);
	if (null >= 0) {
		dup2(null, STDOUT_FILENO);
		dup2(null, STDERR_FILENO);
	}
	setsid();
	for (;;)
		pause();
}
