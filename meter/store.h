/* Part of meter/meter.h; include that. */
#ifndef KP_METER_STORE_H
#define KP_METER_STORE_H

#endif
