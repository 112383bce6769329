// Package bench measures bulwark against its peers doing the same work in the
// same run: sony/gobreaker, failsafe-go, cenkalti/backoff, x/time/rate,
// x/sync/semaphore, go-grpc-middleware and go-redis/redis_rate, with a bare
// call as the floor, in process and against the real Redis and PostgreSQL
// servers of the integration tests.
//
// It is a separate module so that the peers never become dependencies of
// bulwark's users. The benchmarks are named
// Benchmark<Group>/<variant>/<serial|parallel>; cmd/loopback measures HTTP
// and gRPC servers over loopback TCP, a process per variant, and prints its
// results in the same form. bench/run runs both several times and
// cmd/benchtable turns the output into a markdown table of medians and
// ratios to each group's reference peer.
package bench
