/* Part of meter/meter.h; include that. */
#ifndef KP_METER_ROLLUP_H
#define KP_METER_ROLLUP_H

#endif
