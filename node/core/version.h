#ifndef KP_CORE_VERSION_H
#define KP_CORE_VERSION_H

/* Set by CMake from the project version and git. */
const char *kp_version(void);
const char *kp_build_commit(void);

#endif
