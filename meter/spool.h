/* Part of meter/meter.h; include that. */
#ifndef KP_METER_SPOOL_H
#define KP_METER_SPOOL_H

#endif
