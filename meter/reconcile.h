/* Part of meter/meter.h; include that. */
#ifndef KP_METER_RECONCILE_H
#define KP_METER_RECONCILE_H

#endif
