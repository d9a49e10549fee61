/* The textbook fork-per-connection echo server (Stevens, UNP ch. 5), the
 * baseline of bench/run.sh. Blocking accept, fork, the child closes the
 * listener and echoes with read/write until EOF; the parent closes the
 * connection and reaps in a SIGCHLD handler (waitpid WNOHANG until none).
 * No limits, no timeouts, no logging: only what the "textbook"
 * means. Built by bench/run.sh: musl-gcc -static -Os.
 *
 * Built with -DSANDBOX (bench/run.sh's "textbook-sandbox"), the child also
 * installs a seccomp filter right after fork, as forkecho's children do
 * (issue 10): the arch check and the five calls it makes, kill on anything
 * else. What the kernel charges for a filter per child (building and
 * JIT-compiling it, freeing it at exit) is the same for any short program,
 * so this is the textbook server with forkecho's sandbox cost and nothing
 * else of forkecho's.
 *
 *   textbook ADDR PORT          e.g. textbook 127.0.0.1 7007
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#ifdef SANDBOX
#include <stddef.h>
#include <stdint.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
/* <linux/filter.h> and <linux/seccomp.h>, which musl-gcc does not see. */
struct sock_filter { uint16_t code; uint8_t jt, jf; uint32_t k; };
struct sock_fprog { unsigned short len; struct sock_filter *filter; };
#define LD_ABS 0x20 /* BPF_LD | BPF_W | BPF_ABS */
#define JEQ 0x15    /* BPF_JMP | BPF_JEQ | BPF_K */
#define RET 0x06    /* BPF_RET | BPF_K */
#define NR 0        /* offsetof(struct seccomp_data, nr) */
#define ARCH 4      /* offsetof(struct seccomp_data, arch) */
#if defined(__x86_64__)
#define AUDIT_ARCH 0xc000003eu
#elif defined(__aarch64__)
#define AUDIT_ARCH 0xc00000b7u
#elif defined(__arm__)
#define AUDIT_ARCH 0x40000028u
#endif
static void sandbox(void) {
    static struct sock_filter f[] = {
        {LD_ABS, 0, 0, ARCH},
        {JEQ, 1, 0, AUDIT_ARCH},
        {RET, 0, 0, 0x80000000u}, /* SECCOMP_RET_KILL_PROCESS */
        {LD_ABS, 0, 0, NR},
        {JEQ, 5, 0, SYS_read},
        {JEQ, 4, 0, SYS_write},
        {JEQ, 3, 0, SYS_close},
        {JEQ, 2, 0, SYS_exit_group},
        {JEQ, 1, 0, SYS_exit},
        {RET, 0, 0, 0x80000000u},
        {RET, 0, 0, 0x7fff0000u}, /* SECCOMP_RET_ALLOW */
    };
    static struct sock_fprog p = {sizeof f / sizeof f[0], f};
    if (prctl(PR_SET_SECCOMP, 2 /* SECCOMP_MODE_FILTER */, &p, 0, 0) != 0)
        _exit(1);
}
#endif

static void reap(int sig) {
    int saved = errno;
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
    errno = saved;
}

int main(int argc, char **argv) {
    if (argc != 3)
        return 2;
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &a.sin_addr) != 1)
        return 2;
    int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 1024) < 0)
        return 1;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = reap;
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
#ifdef SANDBOX
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return 1;
#endif
    for (;;) {
        int c = accept(l, NULL, NULL);
        if (c < 0)
            continue; /* EINTR, ECONNABORTED, ... */
        pid_t pid = fork();
        if (pid == 0) {
            char buf[4096];
            ssize_t n;
            close(l);
#ifdef SANDBOX
            sandbox();
#endif
            while ((n = read(c, buf, sizeof buf)) > 0) {
                for (ssize_t off = 0; off < n;) {
                    ssize_t w = write(c, buf + off, n - off);
                    if (w <= 0)
                        _exit(1);
                    off += w;
                }
            }
            _exit(0);
        }
        close(c);
    }
}
