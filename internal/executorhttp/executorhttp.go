// Package executorhttp owns how runservice talks HTTP to executors' endpoints (spec.endpoint of an
// Executor, which whoever can write Executors in a namespace chooses): which addresses the manager
// may dial, the timeouts of every client, and the failure of a response body that stops moving.
package executorhttp

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// Timeouts bound each part of a request to an executor. Zero fields take the defaults; a negative
// ResponseHeader turns that bound off (for a followed log, whose headers wait for the step).
type Timeouts struct {
	// Dial bounds connecting (per address tried).
	Dial time.Duration
	// TLSHandshake bounds the TLS handshake of https endpoints.
	TLSHandshake time.Duration
	// ResponseHeader bounds the wait for the response headers once the request is sent.
	ResponseHeader time.Duration
	// Stall fails a response body that delivers no byte for this long (see WatchStall).
	Stall time.Duration
}

// WithDefaults fills the zero fields: an executor serves files from its disk, so a few seconds
// for each of these is generous, and a longer silence means it is stuck.
func (t Timeouts) WithDefaults() Timeouts {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&t.Dial, 10*time.Second)
	def(&t.TLSHandshake, 10*time.Second)
	def(&t.ResponseHeader, 30*time.Second)
	def(&t.Stall, 30*time.Second)
	return t
}

// denied are the addresses a manager never dials unless its operator allows them: where a
// namespace admin who sets an endpoint could reach something the manager's own network position
// gives it (the node's cloud metadata service, the manager's or node's own loopback services).
// Private ranges stay allowed: executors live there (pod IPs).
var denied = []struct {
	prefix netip.Prefix
	what   string
}{
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback"},
	{netip.MustParsePrefix("::1/128"), "loopback"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local (cloud metadata lives at 169.254.169.254)"},
	{netip.MustParsePrefix("fe80::/10"), "link-local"},
	{netip.MustParsePrefix("fd00:ec2::254/128"), "the EC2 metadata service"},
	{netip.MustParsePrefix("100.100.100.200/32"), "the Alibaba Cloud metadata service"},
	{netip.MustParsePrefix("0.0.0.0/8"), "unspecified (Linux connects 0.0.0.0 to the local host)"},
	{netip.MustParsePrefix("::/128"), "unspecified"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast"},
	{netip.MustParsePrefix("255.255.255.255/32"), "broadcast"},
	{netip.MustParsePrefix("ff00::/8"), "multicast"},
}

// Allow lists the address ranges the manager may dial although they are denied by default.
type Allow []netip.Prefix

// allowKeywords are the names ParseAllow accepts besides CIDRs.
var allowKeywords = map[string][]netip.Prefix{
	"loopback":   {netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")},
	"link-local": {netip.MustParsePrefix("169.254.0.0/16"), netip.MustParsePrefix("fe80::/10")},
}

// ParseAllow parses a comma-separated list of CIDRs (10.0.0.1/32, ::1/128) and the keywords
// "loopback" and "link-local"; "" allows nothing more.
func ParseAllow(s string) (Allow, error) {
	var a Allow
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		if ps, ok := allowKeywords[item]; ok {
			a = append(a, ps...)
			continue
		}
		p, err := netip.ParsePrefix(item)
		if err != nil {
			return nil, fmt.Errorf("%q is neither a CIDR nor one of loopback, link-local", item)
		}
		a = append(a, p.Masked())
	}
	return a, nil
}

// String is the flag form of a.
func (a Allow) String() string {
	s := make([]string, len(a))
	for i, p := range a {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}

// Set parses a flag value (flag.Value).
func (a *Allow) Set(s string) error {
	v, err := ParseAllow(s)
	if err != nil {
		return err
	}
	*a = v
	return nil
}

// RefusedError is a dial to an address the manager may not dial.
type RefusedError struct {
	Addr netip.Addr
	What string
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("address %s is %s: the manager does not dial it unless --executor-endpoint-allow includes it", e.Addr, e.What)
}

// Check says whether the manager may dial addr. IPv4-mapped IPv6 addresses (::ffff:127.0.0.1) are
// checked as the IPv4 address they reach.
func (a Allow) Check(addr netip.Addr) error {
	addr = addr.Unmap()
	for _, p := range a {
		if p.Contains(addr) {
			return nil
		}
	}
	for _, d := range denied {
		if d.prefix.Contains(addr) {
			return &RefusedError{Addr: addr, What: d.what}
		}
	}
	return nil
}

// control is the dialer's hook: it sees the address actually being connected to, after name
// resolution, so a DNS name (or a rebinding one) pointing at a denied address is refused too.
func (a Allow) control(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("dialing %s: %w", address, err)
	}
	return a.Check(ap.Addr())
}

// Trust says which executors a client believes: https endpoints whose certificate a CA of Roots
// signed (a namespace's executor CA; never the system's roots, which would let any publicly
// certified host pass for an executor), and plain http endpoints only with HTTP.
type Trust struct {
	Roots *x509.CertPool
	HTTP  bool
}

// TrustPEM trusts the CA certificates of bundle (PEM; none when empty), and http with allowHTTP.
func TrustPEM(bundle []byte, allowHTTP bool) Trust {
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(bundle)
	return Trust{Roots: roots, HTTP: allowHTTP}
}

// ErrPlainHTTP refuses an http:// endpoint to a client not allowed to use one.
var ErrPlainHTTP = errors.New("the endpoint is plain http, which would send the executors' token in clear; executors serve https (the manager's --executor-insecure-http, runctl's --insecure-http allow it)")

// NewClient returns a client for executors' endpoints with timeouts t and trust, which never
// follows redirects (an executor does not send any; a redirect would be a way around the checks).
// With guard, every connection is checked against allow at dial time and no proxy is used (a proxy
// would make the dial check see the proxy's address instead of the executor's); without guard
// (runctl, which runs as its user and dials what they can reach anyway) the environment's proxy
// applies.
func NewClient(t Timeouts, guard bool, allow Allow, trust Trust) *http.Client {
	t = t.WithDefaults()
	dialer := &net.Dialer{Timeout: t.Dial, KeepAlive: 30 * time.Second}
	proxy := http.ProxyFromEnvironment
	if guard {
		dialer.Control = allow.control
		proxy = nil
	}
	roots := trust.Roots
	if roots == nil {
		roots = x509.NewCertPool()
	}
	return &http.Client{
		Transport: &schemeCheck{allowHTTP: trust.HTTP, next: &http.Transport{
			Proxy:                 proxy,
			DialContext:           dialer.DialContext,
			TLSClientConfig:       &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots},
			TLSHandshakeTimeout:   t.TLSHandshake,
			ResponseHeaderTimeout: t.ResponseHeader,
			ExpectContinueTimeout: time.Second,
			IdleConnTimeout:       90 * time.Second,
			MaxIdleConnsPerHost:   4,
		}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// schemeCheck refuses plain http unless allowed, before anything is sent.
type schemeCheck struct {
	allowHTTP bool
	next      http.RoundTripper
}

func (s *schemeCheck) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme == "http" && !s.allowHTTP {
		if req.Body != nil {
			_ = req.Body.Close()
		}
		return nil, ErrPlainHTTP
	}
	return s.next.RoundTrip(req)
}

// ErrStalled is the error of a body read that waited longer than the stall timeout.
var ErrStalled = errors.New("the executor sent nothing")

// WatchStall returns body as a reader that fails with ErrStalled once a single read waits longer
// than d for data: it cancels the request (cancel is its context's) so the blocked read returns.
// Only time spent waiting inside Read counts, not the caller's time between reads (a slow object
// store upload is not the executor's stall).
func WatchStall(body io.Reader, d time.Duration, cancel context.CancelCauseFunc) io.Reader {
	s := &stallReader{r: body, d: d}
	s.timer = time.AfterFunc(time.Hour, func() {
		s.stalled.Store(true)
		cancel(fmt.Errorf("%w for %s", ErrStalled, d))
	})
	s.timer.Stop()
	return s
}

type stallReader struct {
	r       io.Reader
	d       time.Duration
	timer   *time.Timer
	stalled atomic.Bool
}

func (s *stallReader) Read(p []byte) (int, error) {
	s.timer.Reset(s.d)
	n, err := s.r.Read(p)
	s.timer.Stop()
	if err != nil && s.stalled.Load() {
		return n, fmt.Errorf("%w for %s", ErrStalled, s.d)
	}
	return n, err
}
