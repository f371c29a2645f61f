"""Docker's default seccomp profile, compiled to a BPF program with libseccomp (through pyseccomp).

The profile is an allow list: every system call not named here fails with EPERM. It is Docker's
default (moby's profiles/seccomp/default.json) as it applies to a build step with Docker's default
capabilities: rules that Docker only adds for a capability a RUN never has (CAP_SYS_ADMIN,
CAP_SYS_PTRACE, CAP_SYS_MODULE, ...) are left out, so ``unshare``, ``mount``, ``setns``, ``bpf``,
``keyctl``, module loading, ``kcmp`` and the rest are refused, and ``clone`` may not make new
namespaces. ``chroot`` is allowed because CAP_SYS_CHROOT is in the default set.

The program is built in the parent (libseccomp allocates and takes locks) and exported as raw BPF;
the container's init only hands those bytes to the kernel (``linux.install_seccomp_filter``), which
keeps to the executor's fork-safety rules. It is built once per process.
"""

from __future__ import annotations

import errno
import os
import threading

# Allowed with any arguments (Docker's unconditional list; names a kernel or libseccomp does not
# know on this architecture are skipped).
ALLOWED = """
accept accept4 access adjtimex alarm bind brk cachestat capget capset chdir chmod chown chown32
clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime clock_gettime64
clock_nanosleep clock_nanosleep_time64 close close_range connect copy_file_range creat dup dup2 dup3
epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old
eventfd eventfd2 execve execveat exit exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate
fanotify_mark fchdir fchmod fchmodat fchmodat2 fchown fchown32 fchownat fcntl fcntl64 fdatasync
fgetxattr flistxattr flock fork fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync
ftruncate ftruncate64 futex futex_requeue futex_time64 futex_wait futex_waitv futex_wake futimesat
getcpu getcwd getdents getdents64 getegid getegid32 geteuid geteuid32 getgid getgid32 getgroups
getgroups32 getitimer getpeername getpgid getpgrp getpid getppid getpriority getrandom getresgid
getresgid32 getresuid getresuid32 getrlimit get_robust_list getrusage getsid getsockname getsockopt
get_thread_area gettid gettimeofday getuid getuid32 getxattr inotify_add_watch inotify_init
inotify_init1 inotify_rm_watch io_cancel ioctl io_destroy io_getevents io_pgetevents
io_pgetevents_time64 ioprio_get ioprio_set io_setup io_submit ipc kill landlock_add_rule
landlock_create_ruleset landlock_restrict_self lchown lchown32 lgetxattr link linkat listen listxattr
llistxattr _llseek lremovexattr lseek lsetxattr lstat lstat64 madvise map_shadow_stack membarrier
memfd_create memfd_secret mincore mkdir mkdirat mknod mknodat mlock mlock2 mlockall mmap mmap2 mprotect
mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedreceive_time64 mq_timedsend
mq_timedsend_time64 mq_unlink mremap msgctl msgget msgrcv msgsnd msync munlock munlockall munmap
name_to_handle_at nanosleep newfstatat _newselect open openat openat2 pause pidfd_open
pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll ppoll_time64 prctl pread64
preadv preadv2 prlimit64 process_mrelease pselect6 pselect6_time64 pwrite64 pwritev pwritev2 read
readahead readlink readlinkat readv recv recvfrom recvmmsg recvmmsg_time64 recvmsg remap_file_pages
removexattr rename renameat renameat2 restart_syscall rmdir rseq rt_sigaction rt_sigpending
rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64
rt_tgsigqueueinfo sched_getaffinity sched_getattr sched_getparam sched_get_priority_max
sched_get_priority_min sched_getscheduler sched_rr_get_interval sched_rr_get_interval_time64
sched_setaffinity sched_setattr sched_setparam sched_setscheduler sched_yield seccomp select semctl
semget semop semtimedop semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto setfsgid
setfsgid32 setfsuid setfsuid32 setgid setgid32 setgroups setgroups32 setitimer setpgid setpriority
setregid setregid32 setresgid setresgid32 setresuid setresuid32 setreuid setreuid32 setrlimit
set_robust_list setsid setsockopt set_thread_area set_tid_address setuid setuid32 setxattr shmat
shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4 sigprocmask sigreturn socketcall
socketpair splice stat stat64 statfs statfs64 statx symlink symlinkat sync sync_file_range syncfs
sysinfo tee tgkill time timer_create timer_delete timer_getoverrun timer_gettime timer_gettime64
timer_settime timer_settime64 timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime
timerfd_settime64 times tkill truncate truncate64 ugetrlimit umask uname unlink unlinkat utime
utimensat utimensat_time64 utimes vfork vmsplice wait4 waitid waitpid write writev
ptrace process_vm_readv process_vm_writev
chroot
arch_prctl modify_ldt
""".split()
# ptrace and process_vm_*: Docker allows them on kernels >= 4.8, where seccomp can no longer be
# bypassed with them. A RUN sees only its own PID namespace and has no CAP_SYS_PTRACE, so it can
# trace only its own processes.

# personality(2) only with the values Docker allows (PER_LINUX, PER_LINUX32, UNAME26 variants, query).
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
# clone(2) without any CLONE_NEW* flag (NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET).
CLONE_NAMESPACE_FLAGS = 0x7E020000
AF_VSOCK = 40

_lock = threading.Lock()
_program: bytes | None = None


def default_program() -> bytes:
    """The default profile as a BPF program (struct sock_filter[]), built once per process."""
    global _program
    with _lock:
        if _program is None:
            _program = _compile()
        return _program


# Sonames of the libraries pyseccomp looks up when it is imported (stable across Linux distributions).
_SONAMES = {"c": "libc.so.6", "seccomp": "libseccomp.so.2"}


def _import_pyseccomp():
    """pyseccomp, without the two `ldconfig -p` it runs when imported: it looks libc and
    libseccomp up with ctypes.util.find_library, which forks and execs ldconfig for each (10-30 ms
    before the first RUN can start here). Their sonames are tried first, by loading them; a name
    that does not load is looked up the usual way."""
    import ctypes
    import ctypes.util
    import sys

    if "pyseccomp" in sys.modules:
        return sys.modules["pyseccomp"]
    usual = ctypes.util.find_library

    def find_library(name: str) -> str | None:
        soname = _SONAMES.get(name)
        if soname is not None:
            try:
                ctypes.CDLL(soname)
                return soname
            except OSError:
                pass
        return usual(name)

    ctypes.util.find_library = find_library
    try:
        import pyseccomp
    finally:
        ctypes.util.find_library = usual
    return pyseccomp


def _compile() -> bytes:
    sc = _import_pyseccomp()

    flt = sc.SyscallFilter(sc.ERRNO(errno.EPERM))
    # 32-bit and x32 system calls are filtered by the same names (Docker's archMap for amd64);
    # without them the kernel would kill any 32-bit program outright.
    if sc.system_arch() == sc.Arch.X86_64:
        for arch in (sc.Arch.X86, sc.Arch.X32):
            if not flt.exist_arch(arch):
                flt.add_arch(arch)
    for name in ALLOWED:
        number = sc.resolve_syscall(sc.Arch.NATIVE, name)
        if number == -1:  # __NR_SCMP_ERROR: unknown to this libseccomp
            continue
        flt.add_rule(sc.ALLOW, number)
    for persona in PERSONALITIES:
        flt.add_rule(sc.ALLOW, "personality", sc.Arg(0, sc.EQ, persona))
    flt.add_rule(sc.ALLOW, "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_NAMESPACE_FLAGS, 0))
    # clone3's flags are in memory seccomp cannot read: ENOSYS makes libc fall back to clone.
    flt.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    flt.add_rule(sc.ALLOW, "socket", sc.Arg(0, sc.NE, AF_VSOCK))
    # The container's init sets no_new_privs itself; libseccomp must not try to.
    flt.set_attr(sc.Attr.CTL_NNP, 0)
    fd = os.memfd_create("build-image-seccomp", os.MFD_CLOEXEC)
    try:
        flt.export_bpf(_FileNumber(fd))
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


class _FileNumber:
    """What pyseccomp's export wants: an object with fileno()."""

    def __init__(self, fd: int):
        self._fd = fd

    def fileno(self) -> int:
        return self._fd
