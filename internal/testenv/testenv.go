// Package testenv gives tests the addresses of the real Redis and PostgreSQL
// servers they run against.
//
// A test that needs a server calls RedisAddr or PostgresURL. When the
// variable is unset the test is skipped with a message saying how to run it;
// when CI is set, an unset variable or an unreachable server fails the test
// instead, so that an integration test can never pass in CI by skipping.
package testenv

import (
	"net"
	"net/url"
	"os"
	"testing"
	"time"
)

// Variables the integration tests read.
const (
	RedisVar    = "BULWARK_TEST_REDIS_ADDR"   // host:port, e.g. 127.0.0.1:6379
	PostgresVar = "BULWARK_TEST_POSTGRES_URL" // e.g. postgres://postgres@127.0.0.1:5432/test?sslmode=disable
)

// RedisAddr returns the Redis address for integration tests.
func RedisAddr(tb testing.TB) string {
	tb.Helper()
	addr := lookup(tb, RedisVar, "127.0.0.1:6379")
	reachable(tb, RedisVar, addr)
	return addr
}

// PostgresURL returns the PostgreSQL connection URL for integration tests.
func PostgresURL(tb testing.TB) string {
	tb.Helper()
	u := lookup(tb, PostgresVar, "postgres://postgres@127.0.0.1:5432/test?sslmode=disable")
	parsed, err := url.Parse(u)
	if err != nil || parsed.Host == "" {
		tb.Fatalf("%s=%q is not a postgres:// URL: %v", PostgresVar, u, err)
	}
	host := parsed.Host
	if parsed.Port() == "" {
		host = net.JoinHostPort(parsed.Hostname(), "5432")
	}
	reachable(tb, PostgresVar, host)
	return u
}

// InCI reports whether the tests run in CI (the CI variable is set).
func InCI() bool { return os.Getenv("CI") != "" }

func lookup(tb testing.TB, name, example string) string {
	tb.Helper()
	v := os.Getenv(name)
	if v != "" {
		return v
	}
	if InCI() {
		tb.Fatalf("%s is not set: CI must run the integration tests (see .ci/run)", name)
	}
	tb.Skipf("integration test: set %s (e.g. %s) to run it", name, example)
	return ""
}

func reachable(tb testing.TB, name, hostport string) {
	tb.Helper()
	c, err := net.DialTimeout("tcp", hostport, 2*time.Second)
	if err != nil {
		tb.Fatalf("%s=%s is set but the server is unreachable: %v", name, hostport, err)
	}
	_ = c.Close()
}
