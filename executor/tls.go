package executor

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/url"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/pki"
)

// The executors of a namespace serve https with certificates signed by the namespace's CA, kept
// as the manager keeps its webhook's (internal/pki): in the Secret runservice-executor-ca, created
// by the first executor, renewed by whichever finds it near its end (the previous CA stays
// trusted while valid). Each executor signs its own serving certificate for its endpoints' hosts at
// start, in memory, and again when it nears its end. Clients (the manager's fetcher, runctl, task
// pods) trust that CA for that namespace's executors only: an executor's certificate proves it is
// one of the namespace's, which holding the token also would; the CA gives no other name weight.

// caName is the CA's common name.
const caName = "runservice executor CA"

// EnsureCA returns the namespace's executor CA and the bundle clients trust, creating or renewing
// the Secret that holds them.
func EnsureCA(ctx context.Context, reader client.Reader, c client.Client, namespace string) (*pki.CA, []byte, error) {
	key := types.NamespacedName{Namespace: namespace, Name: rsv1.ExecutorCASecret}
	for range 5 {
		s := &corev1.Secret{}
		err := reader.Get(ctx, key, s)
		if err != nil && !apierrors.IsNotFound(err) {
			return nil, nil, fmt.Errorf("reading the executor CA secret %s: %w", key, err)
		}
		ca, data, changed, rerr := pki.Renew(s.Data, caName)
		if rerr != nil {
			return nil, nil, rerr
		}
		switch {
		case apierrors.IsNotFound(err):
			s = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: key.Name, Namespace: namespace}, Data: data}
			err = c.Create(ctx, s)
		case changed:
			s.Data = data
			err = c.Update(ctx, s)
		}
		if apierrors.IsAlreadyExists(err) || apierrors.IsConflict(err) {
			continue // another executor was first: use its CA
		}
		if err != nil {
			return nil, nil, fmt.Errorf("writing the executor CA secret %s: %w", key, err)
		}
		return ca, pki.Bundle(data), nil
	}
	return nil, nil, fmt.Errorf("writing the executor CA secret %s: conflicts with other executors; try again", key)
}

// servingCert is the executor's certificate, renewed before its end.
type servingCert struct {
	reader    client.Reader
	client    client.Client
	namespace string
	hosts     []string

	mu       sync.Mutex
	cert     *tls.Certificate
	end      time.Time
	bundle   []byte
	renewing bool      // one renewal at a time
	retryAt  time.Time // after a failed renewal
}

// renewRetry spaces renewals after one failed.
const renewRetry = time.Minute

// issue signs a new certificate with the namespace's CA (ensuring it first).
func (s *servingCert) issue(ctx context.Context) error {
	ca, bundle, err := EnsureCA(ctx, s.reader, s.client, s.namespace)
	if err != nil {
		return err
	}
	certPEM, keyPEM, err := ca.Issue(s.hosts)
	if err != nil {
		return err
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return err
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.cert, s.end, s.bundle = &pair, leaf.NotAfter, bundle
	s.mu.Unlock()
	return nil
}

// get is the server's tls.Config.GetCertificate: the current certificate. When it nears its end
// (RenewBefore leaves it valid for weeks) one renewal starts in the background; handshakes never
// wait on the apiserver, and a failed renewal is tried again after renewRetry.
func (s *servingCert) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if time.Until(s.end) < pki.RenewBefore && !s.renewing && time.Now().After(s.retryAt) {
		s.renewing = true
		go s.renew()
	}
	return s.cert, nil
}

func (s *servingCert) renew() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := s.issue(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.renewing = false
	if err != nil {
		s.retryAt = time.Now().Add(renewRetry)
	}
}

// caBundle is what the task pods trust for this executor.
func (s *servingCert) caBundle() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bundle
}

// endpointHosts are the hosts of the https URLs among urls, for the serving certificate.
func endpointHosts(urls ...string) ([]string, error) {
	var hosts []string
	for _, u := range urls {
		if u == "" {
			continue
		}
		p, err := url.Parse(u)
		if err != nil {
			return nil, fmt.Errorf("endpoint %q: %w", u, err)
		}
		if p.Scheme == "https" && p.Hostname() != "" {
			hosts = append(hosts, p.Hostname())
		}
	}
	return hosts, nil
}
