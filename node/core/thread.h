/* node/core/thread: naming the threads keyplane starts, so `top -H`,
 * `ps -L`, perf and gdb tell a router worker from the spool or the
 * shipper. */
#ifndef KP_CORE_THREAD_H
#define KP_CORE_THREAD_H

/* Names the calling thread "<prefix>" or, with @index >= 0,
 * "<prefix>-<index>". Linux keeps 15 bytes of a name: a longer one is cut
 * there, never refused. Best effort: a failure leaves the old name. */
void kp_thread_name(const char *prefix, int index);

#endif
