#include "thread.h"

#include <pthread.h>
#include <stdio.h>

/* The kernel's TASK_COMM_LEN is 16 with the terminating NUL. */
#define NAME_MAX_BYTES 15

void kp_thread_name(const char *prefix, int index)
{
    char name[NAME_MAX_BYTES + 1];
    if (index >= 0)
        snprintf(name, sizeof(name), "%s-%d", prefix, index);
    else
        snprintf(name, sizeof(name), "%s", prefix);
    (void)pthread_setname_np(pthread_self(), name);
}
