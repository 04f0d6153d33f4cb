package controllers_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

// TestFetcherUsesARotatedToken: the executors' token Secret is rotated while the manager runs; the
// fetcher then fetches with the new token, without a restart (executors accept only the current one).
func TestFetcherUsesARotatedToken(t *testing.T) {
	ns := newNamespace(t)
	executorToken(t, ns)
	var current atomic.Value
	current.Store(testToken)
	exe := serveHTTP(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+current.Load().(string) {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		_, _ = io.WriteString(w, "log")
	})
	startExecutor(t, ns, "rotating", withFetchEndpoint(exe.URL))
	before := finishOn(t, ns, "before", "rotating")
	eventually(t, 15*time.Second, "the task fetched with the first token", func() (bool, error) {
		return recordedFetch(t, ns, before) != "", nil
	})

	const rotated = "rotated-token"
	patch := client.RawPatch(types.MergePatchType, []byte(`{"stringData":{"`+rsv1.ExecutorTokenKey+`":"`+rotated+`"}}`))
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: rsv1.ExecutorTokenSecret, Namespace: ns}}
	if err := k8s.Patch(context.Background(), s, patch); err != nil {
		t.Fatalf("rotating the token: %v", err)
	}
	current.Store(rotated)
	after := finishOn(t, ns, "after", "rotating")
	eventually(t, 15*time.Second, "the task fetched with the rotated token", func() (bool, error) {
		v := recordedFetch(t, ns, after)
		return v != "" && v != rsv1.FetchedLost, nil
	})
}

// TestFetcherTrustsOnlyTheNamespaceCA: an executor serving https with a certificate signed by the
// CA in its namespace's Secret is fetched from; one whose certificate another CA signed is refused
// (a FetchFailed event names the certificate) and its task stays unfetched.
func TestFetcherTrustsOnlyTheNamespaceCA(t *testing.T) {
	ns := newNamespace(t)
	executorToken(t, ns)
	nsCA := newTestCA(t)
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: rsv1.ExecutorCASecret, Namespace: ns},
		Data:       map[string][]byte{"ca.crt": nsCA.certPEM},
	}
	if err := k8s.Create(context.Background(), s); err != nil {
		t.Fatalf("creating the namespace's executor CA: %v", err)
	}
	serve := func(ca *testCA) (*httptest.Server, *atomic.Int64) {
		var asked atomic.Int64
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			asked.Add(1)
			if r.Header.Get("Authorization") != "Bearer "+testToken {
				http.Error(w, "unauthorized", http.StatusUnauthorized)
				return
			}
			_, _ = io.WriteString(w, "log over tls")
		}))
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.serving(t, "127.0.0.1")}}
		srv.StartTLS()
		t.Cleanup(srv.Close)
		return srv, &asked
	}
	good, _ := serve(nsCA)
	impostor, impostorAsked := serve(newTestCA(t))
	startExecutor(t, ns, "tls", withFetchEndpoint(good.URL))
	startExecutor(t, ns, "impostor", withFetchEndpoint(impostor.URL))
	goodET := finishOn(t, ns, "good", "tls")
	badET := finishOn(t, ns, "bad", "impostor")
	eventually(t, 15*time.Second, "the task fetched over TLS", func() (bool, error) {
		v := recordedFetch(t, ns, goodET)
		return v != "" && v != rsv1.FetchedLost, nil
	})
	eventually(t, 15*time.Second, "the impostor's fetch refused", func() (bool, error) {
		return len(events(t, ns, badET, rsv1.ReasonFetchFailed)) > 0, nil
	})
	if note := events(t, ns, badET, rsv1.ReasonFetchFailed)[0].Note; !strings.Contains(note, "certificate") {
		t.Errorf("the event says %q, want it to name the certificate", note)
	}
	if n := impostorAsked.Load(); n > 0 {
		t.Errorf("the fetcher sent %d requests (and its token) to an executor whose certificate the namespace CA did not sign", n)
	}
	if v := recordedFetch(t, ns, badET); v != "" {
		t.Errorf("the impostor's fetch recorded (%q)", v)
	}
}

// testCA is a CA made with the standard library only, as an administrator's tooling would.
type testCA struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	certPEM []byte
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// serving is a serving certificate for ip signed by ca.
func (ca *testCA) serving(t *testing.T, ip string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: ip},
		IPAddresses: []net.IP{net.ParseIP(ip)}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
