/*
 * fault_torn_write — an LD_PRELOAD fault injector for the crash lab (byok.harness.crashenum).
 *
 * It stands in for a power cut in the middle of one write(2): the process's Nth write(2) call
 * (BYOK_FAULT_TORN_AT=N, counted from 1 like strace's inject=...:when=N) reaches the file only
 * in part — its first BYOK_FAULT_TORN_BYTES bytes — and the process is then killed with SIGKILL
 * before the call returns. Every other write(2) passes through unchanged. Only the test harness
 * loads it; it is built from this file at run time and never installed.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static long calls;

ssize_t write(int fd, const void *buf, size_t n) {
    static ssize_t (*real)(int, const void *, size_t);
    if (!real)
        real = (ssize_t(*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
    const char *at = getenv("BYOK_FAULT_TORN_AT");
    if (at && ++calls == atol(at)) {
        const char *b = getenv("BYOK_FAULT_TORN_BYTES");
        size_t keep = b ? strtoul(b, NULL, 10) : n / 2;
        if (keep > n)
            keep = n;
        off_t pos = lseek(fd, 0, SEEK_CUR);
        /* The descriptor may be O_DIRECT (aligned lengths only): write the prefix through a
         * plain descriptor of the same file, at the same position, and make it durable. */
        char path[64];
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        int plain = open(path, O_WRONLY);
        if (plain >= 0) {
            if (pwrite(plain, buf, keep, pos) < 0)
                _exit(99);
            fsync(plain);
            close(plain);
        }
        kill(getpid(), SIGKILL);
        pause();
    }
    return real(fd, buf, n);
}
