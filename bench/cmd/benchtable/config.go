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
		name: "HTTPLoopback",
		title: "HTTP over loopback TCP at saturation: GET answered 200 by a server process per variant " +
			"(cmd/loopback), 50 keep-alive connections; ns/op is wall time per request, " +
			"allocs/op and B/op count client and server processes, srv-allocs/op the server alone, cli-allocs/op the client alone",
		ref:        "bare",
		metric:     "req/s",
		ratioUnits: []string{"p50-µs", "p99-µs"},
		paired:     true,
		targets: []target{
			{variant: "bulwark-stack", ratio: atLeast(0.97), addedAllocs: atMost(1)},
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
			// The same work as go-grpc-middleware's: one unkeyed limit.
			{variant: "bulwark-ratelimit", ratio: atMost(1), allocs: atMost(0)},
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
			// The same work as go-grpc-middleware's: retry alone.
			{variant: "bulwark-retry", ratio: atMost(1), allocs: atMost(0)},
		},
	},
	{
		name: "GRPCLoopback",
		title: "gRPC unary over loopback TCP at saturation: TestService.UnaryCall to a server process per " +
			"variant (cmd/loopback), 50 callers on one connection; bulwark: client retry + breaker, " +
			"server rate limit + bulkhead + breaker, metrics on; go-grpc-middleware: client retry, " +
			"server rate limit; allocs/op count both processes, srv-allocs/op and cli-allocs/op each",
		ref:        "bare",
		metric:     "calls/s",
		ratioUnits: []string{"p50-µs", "p99-µs"},
		paired:     true,
		targets: []target{
			// Added time: at saturation ns/op is the machine's time per
			// call, so what a variant adds to bare is its cost per call.
			// Added allocations are bounded per process: grpc-go's
			// generated server handler alone allocates 2 more per call
			// whenever any server interceptor is installed.
			{variant: "bulwark-chains",
				addedPerOp: map[string]bound{"cli-allocs/op": atMost(2), "srv-allocs/op": atMost(2)},
				than:       "go-grpc-middleware-retry+ratelimit", thanRatio: atMost(1)},
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
