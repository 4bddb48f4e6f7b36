/* (being written) */
#include <stddef.h>
#include <stdint.h>

#include "meter/meter.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    (void)data;
    (void)size;
    return 0;
}
