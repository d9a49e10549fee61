/* The textbook fork-per-connection echo server (Stevens, UNP ch. 5), the
 * baseline of bench/run.sh. Blocking accept, fork, the child closes the
 * listener and echoes with read/write until EOF; the parent closes the
 * connection and reaps in a SIGCHLD handler (waitpid WNOHANG until none).
 * No limits, no timeouts, no logging: only what the "textbook"
 * means. Built by bench/run.sh: musl-gcc -static -Os.
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
    for (;;) {
        int c = accept(l, NULL, NULL);
        if (c < 0)
            continue; /* EINTR, ECONNABORTED, ... */
        pid_t pid = fork();
        if (pid == 0) {
            char buf[4096];
            ssize_t n;
            close(l);
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
