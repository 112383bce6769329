package reliability

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

// quietRedis drops go-redis's log lines: the fault scenarios make it log
// every failed dial, which says nothing the assertions do not.
type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}

// TestMain fails the package when any goroutine outlives the tests: the
// proxies, servers, pools and leases of every scenario must be gone.
func TestMain(m *testing.M) {
	redis.SetLogger(quietRedis{})
	goleak.VerifyTestMain(m)
}
