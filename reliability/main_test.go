package reliability

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when any goroutine outlives the tests: the
// proxies, servers, pools and leases of every scenario must be gone.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
