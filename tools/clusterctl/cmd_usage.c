/* (being written) */
#include "clusterctl.h"
