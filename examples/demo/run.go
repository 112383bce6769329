package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/bulwark-go/bulwark/breaker"
)

// counter is a shared event count.
type counter struct{ n atomic.Int64 }

func (c *counter) add()       { c.n.Add(1) }
func (c *counter) get() int64 { return c.n.Load() }

// summary is what one run measured.
type summary struct {
	Mode             string  `json:"mode"`
	Requests         int64   `json:"requests"`
	Succeeded        int64   `json:"succeeded"`
	Errors           int64   `json:"errors"`
	UpstreamCalls    int64   `json:"upstream_calls"`
	OutageCalls      int64   `json:"upstream_calls_during_outage"`
	OutageRequests   int64   `json:"requests_during_outage"`
	Retries          int64   `json:"retries"`
	FailedFast       int64   `json:"failed_fast"`
	DuplicateCharges int     `json:"duplicate_charges"`
	P50ms            float64 `json:"p50_ms"`
	P99ms            float64 `json:"p99_ms"`
	RecoverySeconds  float64 `json:"recovery_seconds"` // -1: never recovered
}

// serve starts an HTTP server for h on a loopback port.
func serve(h http.Handler) (url string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return "http://" + ln.Addr().String(), func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}, nil
}

// runOnce runs the schedule once. env is nil for the plain net/http run;
// otherwise bulwark protects both services, reporting metrics on env.reg.
func runOnce(ctx context.Context, opts options, mode string, env *bulwarkEnv, out io.Writer, tty bool) (summary, error) {
	sched := newSchedule(time.Now(), opts.duration)
	pay := newPayments(sched, opts.slowDelay)
	var retries, failedFast counter
	var prot *protection
	if env != nil {
		prot = newProtection(env.reg, env.store, &retries)
	}

	var inner http.Handler = http.HandlerFunc(pay.charge)
	if prot != nil {
		inner = prot.paymentsHandler(pay)
	}
	payURL, stopPay, err := serve(pay.faults(inner))
	if err != nil {
		return summary{}, err
	}
	defer stopPay()

	var front http.Handler
	var closeClient func()
	if prot != nil {
		client := prot.client()
		closeClient = client.CloseIdleConnections
		front = prot.checkoutHandler(func(ctx context.Context, order string) error {
			err := postCharge(ctx, client, payURL, order)
			if errors.Is(err, breaker.ErrOpen) {
				failedFast.add()
			}
			return err
		})
	} else {
		client := &http.Client{Transport: newBaseTransport()}
		closeClient = client.CloseIdleConnections
		front = checkout(naiveCharge(client, payURL, &retries))
	}
	defer closeClient()
	checkoutURL, stopCheckout, err := serve(front)
	if err != nil {
		return summary{}, err
	}
	defer stopCheckout()

	load := &loadgen{rate: opts.rate, duration: opts.duration, timeout: 3 * time.Second, maxInFly: 2000}
	started := time.Now()
	tick := func() {
		if opts.json {
			return
		}
		line := progress(time.Since(started), sched.at(time.Now()), load, &retries, &failedFast, prot)
		if tty {
			fmt.Fprintf(out, "\r\033[K%s", line)
		} else {
			fmt.Fprintln(out, line)
		}
	}
	load.run(ctx, checkoutURL+"/checkout", sched, tick)
	if tty && !opts.json {
		fmt.Fprintln(out)
	}
	if err := ctx.Err(); err != nil {
		return summary{}, err
	}

	_, dups := pay.ledger()
	p50, p99 := load.latencies()
	s := summary{
		Mode:             mode,
		Requests:         load.sent.Load(),
		Succeeded:        load.ok.Load(),
		Errors:           load.failed.Load() + load.shed.Load(),
		OutageCalls:      pay.calls[Outage].Load(),
		Retries:          retries.get(),
		FailedFast:       failedFast.get(),
		DuplicateCharges: dups,
		P50ms:            ms(p50),
		P99ms:            ms(p99),
		RecoverySeconds:  load.recovery(sched).Seconds(),
	}
	for p := range pay.calls {
		s.UpstreamCalls += pay.calls[p].Load()
	}
	s.OutageRequests = load.inPhase(Outage)
	return s, nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func progress(elapsed time.Duration, phase Phase, load *loadgen, retries, failedFast *counter, prot *protection) string {
	sent, ok, failed := load.sent.Load(), load.ok.Load(), load.failed.Load()
	rate := 100.0
	if ok+failed > 0 {
		rate = 100 * float64(ok) / float64(ok+failed)
	}
	state := "-"
	if prot != nil {
		state = prot.breaker.State().String()
	}
	return fmt.Sprintf("%5.1fs  %-9s requests %5d  ok so far %5.1f%%  retries %4d  breaker %-9s  failed fast %4d",
		elapsed.Seconds(), phase, sent, rate, retries.get(), state, failedFast.get())
}

func printTable(out io.Writer, s []summary) {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	row := func(name string, f func(summary) string) {
		cells := []string{name}
		for _, x := range s {
			cells = append(cells, f(x))
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t")+"\t")
	}
	row("", func(x summary) string { return x.Mode })
	row("requests", func(x summary) string { return fmt.Sprint(x.Requests) })
	row("succeeded", func(x summary) string { return fmt.Sprint(x.Succeeded) })
	row("errors callers saw", func(x summary) string { return fmt.Sprint(x.Errors) })
	row("calls to payments during outage", func(x summary) string {
		return fmt.Sprintf("%d (%.1f per request)", x.OutageCalls, float64(x.OutageCalls)/float64(max(x.OutageRequests, 1)))
	})
	row("calls to payments in all", func(x summary) string { return fmt.Sprint(x.UpstreamCalls) })
	row("retries", func(x summary) string { return fmt.Sprint(x.Retries) })
	row("failed fast (breaker open)", func(x summary) string { return fmt.Sprint(x.FailedFast) })
	row("DUPLICATE CHARGES", func(x summary) string { return fmt.Sprint(x.DuplicateCharges) })
	row("latency p50", func(x summary) string { return fmt.Sprintf("%.1f ms", x.P50ms) })
	row("latency p99", func(x summary) string { return fmt.Sprintf("%.1f ms", x.P99ms) })
	row("time to recover", func(x summary) string {
		if x.RecoverySeconds < 0 {
			return "never"
		}
		return fmt.Sprintf("%.0f s", x.RecoverySeconds)
	})
	_ = tw.Flush()
}
