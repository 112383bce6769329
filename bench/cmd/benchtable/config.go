package main

// groups lists the benchmark groups in the order the table shows them, with
// the reference each ratio is taken against and the targets of the design
// ("Benchmark targets in one place"). A group that appears in the input but
// not here is still shown, after these, without ratios. To add a section,
// name its benchmarks Benchmark<Group>/<variant>/<serial|parallel> and add
// the group here.
var groups = []group{
	{
		name:  "Breaker",
		title: "breaker permit + success, closed",
		ref:   "gobreaker-Execute",
		targets: []target{
			{variant: "bulwark-two-phase", ratio: atMost(0.25), allocs: atMost(0)},
			{variant: "bulwark-Do", ratio: atMost(0.25), allocs: atMost(0)},
		},
	},
	{
		name:  "Retry",
		title: "retry, success on the first attempt",
		ref:   "backoff-Retry",
		targets: []target{
			{variant: "bulwark-Loop", ratio: atMost(0.33), allocs: atMost(0)},
			{variant: "bulwark-Do", ratio: atMost(0.33), allocs: atMost(0)},
		},
	},
	{
		name:  "Bulkhead",
		title: "bulkhead acquire + release, a slot free",
		ref:   "semaphore",
		targets: []target{
			{variant: "bulwark-two-phase", ratio: atMost(1.2), allocs: atMost(0)},
			{variant: "bulwark-Do", ratio: atMost(1.2), allocs: atMost(0)},
		},
	},
	{
		name:  "Limiter",
		title: "in-process keyed limiter, allowed",
		ref:   "rate-Allow",
		targets: []target{
			// "≈ rate.Limiter.Allow + key lookup": a lookup costs a few ns
			// beside Allow's, so this allows a tenth more than Allow alone.
			{variant: "bulwark-Local", ratio: atMost(1.1), allocs: atMost(0)},
		},
	},
	{
		name:  "HTTPHandler",
		title: "HTTP server stack in process: rate limit + bulkhead + breaker, metrics on",
		ref:   "failsafe-breaker+bulkhead",
		floor: "bare",
		targets: []target{
			{variant: "bulwark-stack", ratio: atMost(0.33), allocs: atMost(1)},
			{variant: "bulwark-stack+headers", allocs: atMost(3)},
		},
	},
	{
		name:  "GRPCServer",
		title: "gRPC unary server interceptor in process: rate limit + bulkhead + breaker, metrics on",
		ref:   "go-grpc-middleware-ratelimit",
		floor: "bare",
		targets: []target{
			{variant: "bulwark-limit+bulkhead+breaker", allocs: atMost(0),
				perOp: map[string]bound{"ns/op": atMost(150)}},
		},
	},
	{
		name:  "GRPCClient",
		title: "gRPC unary client interceptor in process: retry + breaker, success",
		ref:   "go-grpc-middleware-retry",
		floor: "bare",
		targets: []target{
			{variant: "bulwark-retry+breaker", allocs: atMost(0),
				perOp: map[string]bound{"ns/op": atMost(60)}},
		},
	},
	{
		name:  "Idempotency",
		title: "idempotency claim + complete, memory store",
		targets: []target{
			// At most 2 allocations per store operation; this is two.
			{variant: "bulwark-memory", allocs: atMost(4)},
		},
	},
	{
		name:   "RedisLimiter",
		title:  "Redis limiter, allowed decision that writes state",
		ref:    "redis_rate",
		metric: "decisions/s",
		targets: []target{
			{variant: "bulwark-redisrate", mode: "parallel", ratio: atLeast(1.3), allocs: atMost(8),
				perOp: map[string]bound{"cmds/op": atMost(1)}},
		},
	},
	{
		name:   "RedisIdempotency",
		title:  "idempotency claim + complete, Redis store",
		metric: "ops/s",
		targets: []target{
			// One round trip per store operation; this is two.
			{variant: "bulwark-redisstore", perOp: map[string]bound{"cmds/op": atMost(2)}},
		},
	},
	{
		name:   "PGIdempotency",
		title:  "idempotency claim + complete, PostgreSQL store (64 goroutines over 16 connections in parallel)",
		metric: "ops/s",
		targets: []target{
			// One statement (one round trip) per store operation.
			{variant: "bulwark-pgstore", perOp: map[string]bound{"stmts/op": atMost(2)}},
		},
	},
}
