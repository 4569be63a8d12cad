/*
 * pause: the process of every pod's sandbox container (the CRI "sandbox image"). It holds the pod's namespaces
 * open and does nothing else: as PID 1 of a pod with a shared PID namespace it also reaps orphans.
 *
 * Signals are blocked and taken synchronously with sigwait(): blocked signals are queued even for a PID 1 that
 * has no handler (the kernel drops only unblocked default-action signals to init). SIGINT or SIGTERM ends it
 * with status 0; SIGCHLD reaps every exited child.
 */
#include <signal.h>
#include <stddef.h>
#include <sys/wait.h>

int main(void) {
    sigset_t set;
    int sig;

    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGCHLD);
    if (sigprocmask(SIG_BLOCK, &set, NULL) != 0)
        return 1;
    for (;;) {
        if (sigwait(&set, &sig) != 0)
            continue;
        if (sig != SIGCHLD)
            return 0;
        while (waitpid(-1, NULL, WNOHANG) > 0)
            ;
    }
}
