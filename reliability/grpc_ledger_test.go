package reliability

import (
	"context"
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/bulwark-go/bulwark/grpcmw"
	"github.com/bulwark-go/bulwark/idempotency"
	"github.com/bulwark-go/bulwark/retry"
)

// ledgerService is one replica's TestService: a unary call records its
// request id (the payload) in the shared ledger and answers with the id and
// the replica's name.
type ledgerService struct {
	testpb.UnimplementedTestServiceServer
	name string
	led  *ledger
}

func (s *ledgerService) UnaryCall(_ context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	s.led.add(string(req.GetPayload().GetBody()), s.name)
	return &testpb.SimpleResponse{Payload: req.GetPayload(), Username: s.name}, nil
}

// loseResponse is a server interceptor placed outside grpcmw's: for the
// first attempt of about one logical call in four (by a hash of its id) it lets
// the call run — key claimed, handler run, result stored — and then answers
// Unavailable, as if the response had been lost on the way back.
func loseResponse(lost *atomic.Int64) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		resp, err := handler(ctx, req)
		if err != nil || len(metadata.ValueFromIncomingContext(ctx, grpcmw.PreviousAttemptsHeader)) > 0 {
			return resp, err
		}
		h := fnv.New32a()
		_, _ = h.Write(req.(*testpb.SimpleRequest).GetPayload().GetBody())
		if h.Sum32()%4 != 0 {
			return resp, err
		}
		lost.Add(1)
		return nil, errLost.Err()
	}
}

var errLost = status.New(codes.Unavailable, "reliability: response lost after the handler ran")

type startKey struct{}

// replicaPicker is the client's load balancer, an interceptor placed after
// grpcmw's (so after its retry): it sends each attempt of a logical call to
// the next of the replica connections, starting from the replica the call's
// context names (startKey), and counts what the attempts met.
type replicaPicker struct {
	conns []*grpc.ClientConn

	attempts atomic.Int64
	perConn  [2]atomic.Int64
	mu       sync.Mutex
	codes    map[codes.Code]int
	replays  int
	wireErrs int // Unavailable from the transport, not from loseResponse
}

func (p *replicaPicker) intercept(ctx context.Context, method string, req, reply any, _ *grpc.ClientConn, _ grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	start, _ := ctx.Value(startKey{}).(int)
	prev := 0
	if md, ok := metadata.FromOutgoingContext(ctx); ok {
		if v := md.Get(grpcmw.PreviousAttemptsHeader); len(v) > 0 {
			prev, _ = strconv.Atoi(v[len(v)-1])
		}
	}
	i := (start + prev) % len(p.conns)
	p.attempts.Add(1)
	p.perConn[i].Add(1)
	var header metadata.MD
	err := p.conns[i].Invoke(ctx, method, req, reply, append(slices.Clip(opts), grpc.Header(&header))...)
	p.mu.Lock()
	p.codes[status.Code(err)]++
	if status.Code(err) == codes.Unavailable && status.Convert(err).Message() != errLost.Message() {
		p.wireErrs++
	}
	if len(header.Get(grpcmw.ReplayedHeader)) > 0 {
		p.replays++
	}
	p.mu.Unlock()
	return err
}

// TestGRPCExactlyOnceLedger: scenario 6 over gRPC. Six clients each make 20
// logical calls with grpcmw's retry and idempotency keys to two replicas,
// alternating per attempt, through proxies that cut every connection after
// a number of response bytes; each replica also drops the response of the
// first attempt of a quarter of the calls after running them. The replicas
// share one store: Redis, then PostgreSQL.
func TestGRPCExactlyOnceLedger(t *testing.T) {
	const clients, perClient = 6, 20
	for _, st := range sharedStores() {
		t.Run(st.name, func(t *testing.T) {
			newStore := st.open(t)
			led := &ledger{entries: map[string][]string{}}
			var lost atomic.Int64
			names := []string{"A", "B"}
			picker := &replicaPicker{codes: map[codes.Code]int{}}
			var proxies []*faultProxy
			for _, name := range names {
				// A short lease: a claim whose answer a cut connection lost
				// keeps its key in flight only this long.
				guard := idempotency.New("grpc-ledger-"+name, newStore(), idempotency.WithLease(time.Second))
				addr := serveGRPC(t, &ledgerService{name: name, led: led}, grpc.ChainUnaryInterceptor(
					loseResponse(&lost),
					grpcmw.UnaryServerInterceptor(grpcmw.WithIdempotency(guard),
						grpcmw.WithIdempotencyScope(func(ctx context.Context) string {
							if v := metadata.ValueFromIncomingContext(ctx, "x-client"); len(v) > 0 {
								return v[0]
							}
							return ""
						}))))
				px := newFaultProxy(t, addr)
				// Every connection closes after 1 KiB of responses (about
				// ten answers): the calls in flight on it lose their
				// answers, some after the handler ran, and the client
				// connects again.
				px.AddToxic(toxic{Name: "cut-down", Type: "bulwark_cut", Stream: "downstream", Attributes: map[string]any{"bytes": 1024}})
				proxies = append(proxies, px)
			}
			for _, px := range proxies {
				picker.conns = append(picker.conns, dialGRPC(t, px.Addr()))
			}
			// The in-flight Aborted is retried by default: the key carries
			// the call, and the retry waits its pushback (a second at most).
			policy := retry.New("grpc-ledger", retry.WithMaxAttempts(200), retry.WithBudget(nil),
				retry.WithBackOff(func() backoff.BackOff {
					return backoff.NewExponentialBackOff(backoff.WithInitialInterval(5*time.Millisecond),
						backoff.WithMaxInterval(50*time.Millisecond), backoff.WithMaxElapsedTime(0))
				}))
			// The front connection is never dialled: the picker sends every
			// attempt on a replica connection.
			front := dialGRPC(t, "passthrough:///replicas.invalid", grpc.WithChainUnaryInterceptor(
				grpcmw.UnaryClientInterceptor(grpcmw.WithRetry(policy), grpcmw.WithIdempotencyKeys()),
				picker.intercept))
			client := testpb.NewTestServiceClient(front)
			run := strconv.FormatInt(time.Now().UnixNano(), 10)

			type result struct {
				id       string
				resp     *testpb.SimpleResponse
				err      error
				attempts int
			}
			results := make([][]result, clients)
			var wg sync.WaitGroup
			start := time.Now()
			for c := range clients {
				wg.Go(func() {
					for m := range perClient {
						id := fmt.Sprintf("c%d-r%02d-%s", c, m, run)
						ctx, cancel := context.WithTimeout(bg, 15*time.Second)
						ctx = context.WithValue(ctx, startKey{}, (c+m)%2)
						ctx = metadata.AppendToOutgoingContext(ctx, "x-client", strconv.Itoa(c))
						res := result{id: id}
						res.resp, res.err = client.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte(id)}},
							grpcmw.ReportAttempts(&res.attempts))
						cancel()
						results[c] = append(results[c], res)
					}
				})
			}
			wg.Wait()
			took := time.Since(start)

			// Every client got the result of its own call.
			maxAttempts, retried := 0, 0
			for c := range clients {
				require.Len(t, results[c], perClient)
				for _, r := range results[c] {
					require.NoError(t, r.err, "call %s after %d attempts", r.id, r.attempts)
					require.Equal(t, r.id, string(r.resp.GetPayload().GetBody()), "client %d got another call's response", c)
					maxAttempts = max(maxAttempts, r.attempts)
					if r.attempts > 1 {
						retried++
					}
				}
			}
			// The ledger holds every logical call exactly once.
			led.mu.Lock()
			defer led.mu.Unlock()
			require.Len(t, led.entries, clients*perClient)
			byReplica := map[string]int{}
			for id, ran := range led.entries {
				require.Len(t, ran, 1, "call %s ran on %v", id, ran)
				byReplica[ran[0]]++
			}
			picker.mu.Lock()
			defer picker.mu.Unlock()
			t.Logf("%s: %d logical calls, %d ledger entries (A %d, B %d); %d attempts (A %d, B %d; codes %v; %d failed on the wire), %d calls retried, at most %d attempts; %d responses dropped after the run, %d answered by replay; %v",
				st.name, clients*perClient, len(led.entries), byReplica["A"], byReplica["B"],
				picker.attempts.Load(), picker.perConn[0].Load(), picker.perConn[1].Load(), picker.codes, picker.wireErrs,
				retried, maxAttempts, lost.Load(), picker.replays, took.Round(time.Millisecond))
			require.Positive(t, lost.Load(), "responses were lost after the handler ran")
			require.Positive(t, picker.wireErrs, "the proxies cut connections under calls")
			require.GreaterOrEqual(t, picker.replays, int(lost.Load()), "every lost response is answered by a replay on retry")
			// And each answer, first-hand or replayed, is the response of
			// the one run the ledger holds.
			for c := range clients {
				for _, r := range results[c] {
					require.Equal(t, led.entries[r.id][0], r.resp.GetUsername(), "call %s", r.id)
				}
			}
		})
	}
}
