package redisrate_test

import (
	"context"
	"fmt"
	"time"

	"github.com/bulwark-go/bulwark/ratelimit"
	"github.com/bulwark-go/bulwark/ratelimit/redisrate"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

func ExampleNew() {
	rdb := redis.NewClient(&redis.Options{
		Addr:                  "127.0.0.1:6379",
		ContextTimeoutEnabled: true, // lets the per-decision timeout bound socket reads
	})
	defer rdb.Close()

	// 100 requests a second per API key across all replicas, bursts of 200.
	// If Redis is away, each of (say) 4 replicas enforces a quarter locally.
	fallback := ratelimit.NewLocal("api-fallback", 25, 50)
	l := redisrate.New("api", rdb, 100, 200,
		redisrate.WithFailureMode(redisrate.FallbackLocal(fallback)),
		redisrate.WithTimeout(50*time.Millisecond),
		redisrate.WithRegisterer(prometheus.NewRegistry()),
	)

	d, err := l.Allow(context.Background(), "api-key-123", 1)
	if err != nil {
		fmt.Println("no decision:", err) // answer 503
		return
	}
	if !d.Allowed {
		fmt.Println("429, Retry-After:", d.RetryAfter) // answer 429
		return
	}
	fmt.Printf("allowed; %d of %d left\n", d.Remaining, d.Limit)
}
