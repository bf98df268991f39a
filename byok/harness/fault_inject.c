/*
 * fault_inject — an LD_PRELOAD fault injector for the crash lab (byok.harness.crashenum).
 *
 * It stands in for a host dying at one precise system call. Every write(2), fsync(2),
 * fdatasync(2) and rename(2)/renameat(2) call of the processes it is loaded into is counted
 * in one counter shared by the whole process tree (a file, incremented under flock); the call
 * that makes it BYOK_FAULT_AT:
 *
 *   - BYOK_FAULT_TORN_BYTES unset: is not made, and the process is killed (SIGKILL) — or, with
 *     BYOK_FAULT_KILL=group, its whole process group (the "power cut": nothing after it runs),
 *     or with BYOK_FAULT_KILL=tree the whole tree across sessions (see note_root below);
 *   - BYOK_FAULT_TORN_BYTES=k (write only): reaches the file with only its first k bytes (what
 *     a power cut leaves of a write), then the kill.
 *
 * BYOK_FAULT_EXE=name counts only in processes whose executable is called name (e.g.
 * "cryptsetup": the calls of byok's own Python process pass uncounted); BYOK_FAULT_WRITES_ONLY
 * counts write(2) alone (the numbering of strace -e inject=write:...:when=N). With BYOK_FAULT_AT=0
 * nothing is injected: the counter just counts (how many calls an operation makes);
 * BYOK_FAULT_LOG=file appends one line per counted call: "n kind bytes exe".
 *
 * BYOK_FAULT_ALL=1 widens the set to every call that changes what survives the process or that
 * another process sees: pwrite, ftruncate/truncate, copy_file_range, fallocate, unlink/unlinkat,
 * rmdir, renameat2, and send/sendto/sendmsg (each request to Keystone or Barbican — a kill at
 * a send is a crash between two calls to the key service). Unset, the numbering is the
 * original one (write, fsync, fdatasync, rename, renameat).
 * Only the test harness loads it; it is built from this file at run time, never installed.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <unistd.h>

static int active = -1;

static int enabled(void) {
    if (active < 0) {
        const char *exe = getenv("BYOK_FAULT_EXE");
        active = getenv("BYOK_FAULT_COUNTER") != NULL;
        if (active && exe && *exe) {
            char buf[4096];
            ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
            buf[n > 0 ? n : 0] = 0;
            const char *base = strrchr(buf, '/');
            active = strcmp(base ? base + 1 : buf, exe) == 0;
        }
    }
    return active;
}

/* A process forked from a warm interpreter that loaded the injector inactive (the fork server,
 * byok.harness.forkserver) sets its fault environment and calls this: the next call reads it. */
void byok_fault_rearm(void) { active = -1; }

static void note(long n, const char *kind, size_t bytes) {
    const char *log = getenv("BYOK_FAULT_LOG");
    if (!log || n <= 0)
        return;
    int fd = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return;
    char exe[4096], line[4200];
    ssize_t k = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[k > 0 ? k : 0] = 0;
    const char *base = strrchr(exe, '/');
    int len = snprintf(line, sizeof line, "%ld %s %zu %s\n", n, kind, bytes, base ? base + 1 : exe);
    static ssize_t (*real)(int, const void *, size_t);
    if (!real)
        real = (ssize_t(*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
    if (real(fd, line, (size_t)len) < 0)
        len = 0;
    close(fd);
}

/* This call's number in the tree-wide sequence (1-based); 0 if not counting. */
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static int (*real_fsync)(int);

static void resolve_reals(void) {
    if (!real_pwrite)
        real_pwrite = (ssize_t(*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, "pwrite");
    if (!real_fsync)
        real_fsync = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
}

static long next_call(void) {
    if (!enabled())
        return 0;
    resolve_reals();
    int fd = open(getenv("BYOK_FAULT_COUNTER"), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return 0;
    flock(fd, LOCK_EX);
    char buf[32] = {0};
    long n = pread(fd, buf, sizeof buf - 1, 0) > 0 ? atol(buf) : 0;
    n++;
    int len = snprintf(buf, sizeof buf, "%ld\n", n);
    if (real_pwrite(fd, buf, (size_t)len, 0) < 0)
        n = 0;
    flock(fd, LOCK_UN);
    close(fd);
    return n;
}

/* BYOK_FAULT_KILL=tree: the first process of the tree (the one the harness started, in its
 * own session) notes its pid in BYOK_FAULT_ROOT when the injector loads; a fault anywhere in
 * the tree then kills that process's group first — byok, which starts each cryptsetup in a
 * session of its own, must not live to see its child die — then the faulting process's. */
__attribute__((constructor)) static void note_root(void) {
    const char *root = getenv("BYOK_FAULT_ROOT");
    if (!root || !*root)
        return;
    int fd = open(root, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return; /* not the first */
    char buf[32];
    int len = snprintf(buf, sizeof buf, "%ld\n", (long)getpid());
    resolve_reals();
    if (real_pwrite(fd, buf, (size_t)len, 0) < 0)
        len = 0;
    close(fd);
}

static void die(void) {
    const char *how = getenv("BYOK_FAULT_KILL");
    if (how && strcmp(how, "tree") == 0) {
        const char *root = getenv("BYOK_FAULT_ROOT");
        int fd = root ? open(root, O_RDONLY | O_CLOEXEC) : -1;
        char buf[32] = {0};
        if (fd >= 0) {
            long pid = read(fd, buf, sizeof buf - 1) > 0 ? atol(buf) : 0;
            close(fd);
            if (pid > 1 && getpgid((pid_t)pid) == (pid_t)pid)
                kill((pid_t)-pid, SIGKILL);
        }
        kill(0, SIGKILL);
    }
    if (how && strcmp(how, "group") == 0)
        kill(0, SIGKILL);
    kill(getpid(), SIGKILL);
    pause();
}

static int hit(long n) {
    const char *at = getenv("BYOK_FAULT_AT");
    return n > 0 && at && atol(at) == n;
}

ssize_t write(int fd, const void *buf, size_t len) {
    static ssize_t (*real)(int, const void *, size_t);
    if (!real)
        real = (ssize_t(*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
    long n = next_call();
    note(n, "write", len);
    if (hit(n)) {
        const char *b = getenv("BYOK_FAULT_TORN_BYTES");
        if (b) {
            size_t keep = strtoul(b, NULL, 10);
            if (keep > len)
                keep = len;
            off_t pos = lseek(fd, 0, SEEK_CUR);
            /* The descriptor may be O_DIRECT (aligned lengths only): write the prefix through
             * a plain descriptor of the same file, at the same position, durably. */
            char path[64];
            snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
            int plain = open(path, O_WRONLY | O_CLOEXEC);
            resolve_reals();
            if (plain >= 0) {
                if (real_pwrite(plain, buf, keep, pos) >= 0)
                    real_fsync(plain);
                close(plain);
            }
        }
        die();
    }
    return real(fd, buf, len);
}

/* A counted call that is made whole or not at all. ``wide``: only with BYOK_FAULT_ALL. */
#define COUNTED(type, name, proto, args, bytes, wide)                                        \
    type name proto {                                                                        \
        static type(*real) proto;                                                            \
        if (!real)                                                                           \
            real = (type(*) proto)dlsym(RTLD_NEXT, #name);                                   \
        if (!getenv("BYOK_FAULT_WRITES_ONLY") && (!(wide) || getenv("BYOK_FAULT_ALL"))) {   \
            long n = next_call();                                                            \
            note(n, #name, (size_t)(bytes));                                                 \
            if (hit(n))                                                                      \
                die();                                                                       \
        }                                                                                    \
        return real args;                                                                    \
    }

#define SIMPLE(name, proto, args) COUNTED(int, name, proto, args, 0, 0)

SIMPLE(fsync, (int fd), (fd))
SIMPLE(fdatasync, (int fd), (fd))
SIMPLE(rename, (const char *a, const char *b), (a, b))
SIMPLE(renameat, (int fa, const char *a, int fb, const char *b), (fa, a, fb, b))

COUNTED(int, renameat2, (int fa, const char *a, int fb, const char *b, unsigned int fl),
        (fa, a, fb, b, fl), 0, 1)
COUNTED(ssize_t, pwrite, (int fd, const void *buf, size_t len, off_t off), (fd, buf, len, off),
        len, 1)
COUNTED(ssize_t, pwrite64, (int fd, const void *buf, size_t len, off_t off),
        (fd, buf, len, off), len, 1)
COUNTED(int, ftruncate, (int fd, off_t len), (fd, len), 0, 1)
COUNTED(int, ftruncate64, (int fd, off_t len), (fd, len), 0, 1)
COUNTED(int, truncate, (const char *p, off_t len), (p, len), 0, 1)
COUNTED(int, truncate64, (const char *p, off_t len), (p, len), 0, 1)
COUNTED(int, fallocate, (int fd, int mode, off_t off, off_t len), (fd, mode, off, len), 0, 1)
COUNTED(int, fallocate64, (int fd, int mode, off_t off, off_t len), (fd, mode, off, len), 0, 1)
COUNTED(ssize_t, copy_file_range,
        (int fi, off_t *oi, int fo, off_t *oo, size_t len, unsigned int fl),
        (fi, oi, fo, oo, len, fl), len, 1)
COUNTED(int, unlink, (const char *p), (p), 0, 1)
COUNTED(int, unlinkat, (int d, const char *p, int fl), (d, p, fl), 0, 1)
COUNTED(int, rmdir, (const char *p), (p), 0, 1)
COUNTED(ssize_t, send, (int fd, const void *buf, size_t len, int fl), (fd, buf, len, fl), len, 1)
COUNTED(ssize_t, sendto,
        (int fd, const void *buf, size_t len, int fl, const struct sockaddr *a, socklen_t al),
        (fd, buf, len, fl, a, al), len, 1)
COUNTED(ssize_t, sendmsg, (int fd, const struct msghdr *m, int fl), (fd, m, fl), 0, 1)
