package grpcmw

import (
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// nilStatusError has a GRPCStatus method that returns nil.
type nilStatusError struct{}

func (nilStatusError) Error() string              { return "no status" }
func (nilStatusError) GRPCStatus() *status.Status { return nil }

// codeOf agrees with status.Code, which reads a nil GRPCStatus as Unknown: a
// breaker counts such an error as a failure, not a success.
func TestCodeOfNilStatusIsUnknown(t *testing.T) {
	require.Equal(t, status.Code(nilStatusError{}), codeOf(nilStatusError{}))
	require.Equal(t, codes.Unknown, codeOf(nilStatusError{}))
}
