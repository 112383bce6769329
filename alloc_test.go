//go:build !race

package bulwark_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/bulwark-go/bulwark"
)

// IsPermanent runs on every failed attempt a retry policy classifies: it
// walks the error's tree without allocating.
func TestIsPermanentDoesNotAllocate(t *testing.T) {
	base := errors.New("upstream said no")
	errs := []error{
		base,
		fmt.Errorf("call: %w", bulwark.WithHint(base, bulwark.Hint{RetryAfter: time.Second})),
		bulwark.WithHint(bulwark.Permanent(base), bulwark.Hint{RetryAfter: time.Second}),
		errors.Join(base, bulwark.WithHint(base, bulwark.Hint{RetryAfter: time.Second})),
	}
	for _, err := range errs {
		require.Zero(t, testing.AllocsPerRun(100, func() { bulwark.IsPermanent(err) }), "%v", err)
	}
}
