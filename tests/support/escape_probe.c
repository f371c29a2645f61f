/* One escape attempt (or resource hog) per call, as a build step would make it: prints "ok" and
 * exits 0 if the kernel let it through, prints "blocked: <errno name>" and exits 1 otherwise.
 * Built static by tests/support/escape_probe.py so that it runs in a busybox root. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/keyctl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <unistd.h>

static int report(long ret) {
    if (ret < 0) {
        printf("blocked: %s\n", strerrorname_np(errno));
        return 1;
    }
    printf("ok\n");
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    const char *what = argv[1];
    if (!strcmp(what, "ptrace")) return report(ptrace(PTRACE_ATTACH, atoi(argv[2]), 0, 0));
    if (!strcmp(what, "unshare-user")) return report(unshare(CLONE_NEWUSER));
    if (!strcmp(what, "unshare-mount")) return report(unshare(CLONE_NEWNS));
    if (!strcmp(what, "clone-newuser")) {
        long pid = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
        if (pid == 0) _exit(0);
        return report(pid);
    }
    if (!strcmp(what, "mount-proc")) return report(mount("proc", "/mnt", "proc", 0, 0));
    if (!strcmp(what, "keyctl")) return report(syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, "escape"));
    if (!strcmp(what, "bpf")) {
        union bpf_attr attr;
        memset(&attr, 0, sizeof attr);
        attr.map_type = BPF_MAP_TYPE_ARRAY;
        attr.key_size = 4;
        attr.value_size = 4;
        attr.max_entries = 1;
        return report(syscall(SYS_bpf, BPF_MAP_CREATE, &attr, sizeof attr));
    }
    if (!strcmp(what, "init-module")) return report(syscall(SYS_init_module, "", 0, ""));
    if (!strcmp(what, "sethostname")) return report(sethostname(argv[2], strlen(argv[2])));
    if (!strcmp(what, "open")) return report(open(argv[2], O_RDONLY));
    if (!strcmp(what, "alloc")) {  /* touch N MiB, one page at a time: a memory hog */
        long mib = atol(argv[2]);
        for (long i = 0; i < mib; i++) {
            char *block = malloc(1 << 20);
            if (!block) return report(-1);
            for (long j = 0; j < (1 << 20); j += 4096) block[j] = 1;
        }
        return report(0);
    }
    return 2;
}
