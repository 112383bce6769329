// Package bulkhead limits how many calls run at once, with an optional
// bounded FIFO queue in which callers wait, for a bounded time, for a slot.
//
// A [Bulkhead] admits a call when fewer than its limit are in flight. When
// the limit is reached it either rejects the call at once with [ErrFull] (the
// default: no queue) or, when configured with [WithQueue], lets it wait in
// first-in, first-out order for at most [WithMaxWait] and as long as the
// caller's context allows. A wait that runs out of time ends with
// [ErrTimeout]; a context that ends first ends it with an error that wraps
// ctx.Err(). Rejections are [*RejectedError] values that carry a retry-after
// [bulwark.Hint], so the HTTP and gRPC adapters can set Retry-After or
// pushback.
//
// Adapters use the two-phase form, [Bulkhead.Acquire] then
// [Permit.Release], which does not allocate when a slot is free;
// [Bulkhead.Do] wraps both and makes a Bulkhead a [bulwark.Policy].
// [Bulkhead.SetLimit] changes the limit while calls run, without losing or
// inventing a slot.
//
// Metrics, labelled with the bulkhead's name, when [WithRegisterer] is given:
//
//	bulwark_bulkhead_in_flight                       gauge: calls holding a slot
//	bulwark_bulkhead_queued                          gauge: calls waiting for a slot
//	bulwark_bulkhead_limit                           gauge: the current limit
//	bulwark_bulkhead_rejected_total{reason}          counter: reason is full, timeout or canceled
//	bulwark_bulkhead_wait_seconds                    histogram: time spent in the queue
//
// The three gauges are read from the bulkhead's own counters when Prometheus
// scrapes, so admitting and releasing a call costs no metric update at all.
package bulkhead
