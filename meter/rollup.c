/* (being written) */
#include "meter/meter.h"
