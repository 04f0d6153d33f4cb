package executorhttp

import (
	"crypto/tls"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
)

func TestCheck(t *testing.T) {
	loopback, err := ParseAllow("loopback, 10.1.2.3/32")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		addr    string
		allow   Allow
		refused bool
	}{
		{"10.0.0.7", nil, false},
		{"192.168.1.1", nil, false},
		{"fd00::1", nil, false},
		{"169.254.169.254", nil, true},
		{"169.254.169.254", loopback, true},
		{"fe80::1", nil, true},
		{"fd00:ec2::254", nil, true},
		{"127.0.0.1", nil, true},
		{"127.0.0.1", loopback, false},
		{"127.9.9.9", loopback, false},
		{"::1", nil, true},
		{"::1", loopback, false},
		{"::ffff:127.0.0.1", nil, true},
		{"::ffff:169.254.169.254", loopback, true},
		{"0.0.0.0", nil, true},
		{"::", nil, true},
		{"224.0.0.1", nil, true},
		{"ff02::1", nil, true},
		{"255.255.255.255", nil, true},
		{"100.100.100.200", nil, true},
		{"100.100.100.201", nil, false},
	}
	for _, c := range cases {
		err := c.allow.Check(netip.MustParseAddr(c.addr))
		if _, refused := errors.AsType[*RefusedError](err); refused != c.refused {
			t.Errorf("Check(%s) with allow %v = %v, want refused %v", c.addr, c.allow, err, c.refused)
		}
	}
}

func TestParseAllow(t *testing.T) {
	a, err := ParseAllow("link-local,10.0.0.0/8, fd00::/8")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := a.String(), "169.254.0.0/16,fe80::/10,10.0.0.0/8,fd00::/8"; got != want {
		t.Errorf("ParseAllow = %s, want %s", got, want)
	}
	for _, bad := range []string{"localhost", "10.0.0.1", "10.0.0.0/33"} {
		if _, err := ParseAllow(bad); err == nil || !strings.Contains(err.Error(), bad) {
			t.Errorf("ParseAllow(%q) = %v, want an error naming it", bad, err)
		}
	}
}

// TestPlainHTTPOnlyWhenAllowed: a client not allowed plain http refuses an http:// endpoint before
// it connects (the request would carry the executors' token in clear); allowed, it connects.
func TestPlainHTTPOnlyWhenAllowed(t *testing.T) {
	var asked atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { asked.Add(1) }))
	defer srv.Close()
	refusing := NewClient(Timeouts{}, false, nil, TrustPEM(nil, false))
	if _, err := refusing.Get(srv.URL); !errors.Is(err, ErrPlainHTTP) {
		t.Fatalf("GET %s without plain http allowed: %v, want ErrPlainHTTP", srv.URL, err)
	}
	if n := asked.Load(); n != 0 {
		t.Fatalf("the refusing client reached the server %d times", n)
	}
	resp, err := NewClient(Timeouts{}, false, nil, TrustPEM(nil, true)).Get(srv.URL)
	if err != nil {
		t.Fatalf("GET %s with plain http allowed: %v", srv.URL, err)
	}
	_ = resp.Body.Close()
}

// TestOnlyTheGivenCAIsTrusted: an https endpoint is trusted by the given CA only, never by the
// system's roots.
func TestOnlyTheGivenCAIsTrusted(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer srv.Close()
	if _, err := NewClient(Timeouts{}, false, nil, TrustPEM(nil, false)).Get(srv.URL); !errors.As(err, new(*tls.CertificateVerificationError)) {
		t.Fatalf("GET %s trusting no CA: %v, want a certificate verification error", srv.URL, err)
	}
	bundle := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	resp, err := NewClient(Timeouts{}, false, nil, TrustPEM(bundle, false)).Get(srv.URL)
	if err != nil {
		t.Fatalf("GET %s trusting its CA: %v", srv.URL, err)
	}
	_ = resp.Body.Close()
}
