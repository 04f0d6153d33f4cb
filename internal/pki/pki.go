// Package pki owns the certificate authorities runservice keeps itself, in Secrets: a CA (key and
// certificate), the previous CA while it is still valid (clients trust both during a renewal), and
// the serving certificates it signs. The manager's webhook (internal/webhookcert) and the
// executors' endpoints (executor) both use it.
package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"time"
)

// Keys of a Secret holding a CA.
const (
	CACertKey = "ca.crt"
	CAKeyKey  = "ca.key"
	// PreviousCAKey is the CA before the last renewal: certificates it signed are still served
	// until their holders next renew, so clients trust it too until it expires.
	PreviousCAKey = "ca-previous.crt"
)

// Validity of the certificates, and how long before their end they are renewed.
const (
	Validity    = 365 * 24 * time.Hour
	RenewBefore = 30 * 24 * time.Hour
)

// CA signs serving certificates.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// NewCA makes a CA named name, valid twice as long as the certificates it signs.
func NewCA(name string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(2 * Validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("making the CA %q: %w", name, err)
	}
	cert, err := x509.ParseCertificate(der)
	return &CA{Cert: cert, Key: key}, err
}

// ParseCA reads the CA of a Secret's data.
func ParseCA(data map[string][]byte) (*CA, error) {
	cb, _ := pem.Decode(data[CACertKey])
	kb, _ := pem.Decode(data[CAKeyKey])
	if cb == nil || kb == nil {
		return nil, errors.New("no CA")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, err
	}
	key, err := x509.ParseECPrivateKey(kb.Bytes)
	return &CA{Cert: cert, Key: key}, err
}

// Renew returns the CA of data when it is good for longer than RenewBefore, else a new one; data
// is the Secret's data to keep (the CA, and the previous one while valid), and changed says
// whether it differs from the given data.
func Renew(data map[string][]byte, name string) (ca *CA, out map[string][]byte, changed bool, err error) {
	old, err := ParseCA(data)
	if err == nil && time.Until(old.Cert.NotAfter) >= RenewBefore {
		return old, data, false, nil
	}
	if ca, err = NewCA(name); err != nil {
		return nil, nil, false, err
	}
	keyDER, err := x509.MarshalECPrivateKey(ca.Key)
	if err != nil {
		return nil, nil, false, err
	}
	out = map[string][]byte{
		CACertKey: ca.CertPEM(),
		CAKeyKey:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
	}
	if old != nil && time.Now().Before(old.Cert.NotAfter) {
		out[PreviousCAKey] = data[CACertKey]
	}
	return ca, out, true, nil
}

// CertPEM is the CA's certificate as PEM: what its clients trust.
func (ca *CA) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
}

// Bundle is what clients trust: the CA, and the previous one while it is valid.
func Bundle(data map[string][]byte) []byte {
	bundle := bytes.Clone(data[CACertKey])
	if prev, ok := data[PreviousCAKey]; ok {
		if b, _ := pem.Decode(prev); b != nil {
			if c, err := x509.ParseCertificate(b.Bytes); err == nil && time.Now().Before(c.NotAfter) {
				bundle = append(bundle, prev...)
			}
		}
	}
	return bundle
}

// Issue signs a serving certificate for hosts (DNS names or IP addresses), valid for Validity but
// never past the CA's own end; it returns the certificate and key as PEM.
func (ca *CA) Issue(hosts []string) (certPEM, keyPEM []byte, err error) {
	if len(hosts) == 0 {
		return nil, nil, errors.New("a serving certificate needs a host name or address")
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: hosts[0]},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	certPEM, keyPEM, err = ca.sign(tmpl)
	if err != nil {
		return nil, nil, fmt.Errorf("signing the serving certificate for %v: %w", hosts, err)
	}
	return certPEM, keyPEM, nil
}

// IssueClient signs a client certificate whose common name is name (the user a Kubernetes
// apiserver sees), valid as Issue's.
func (ca *CA) IssueClient(name string) (certPEM, keyPEM []byte, err error) {
	certPEM, keyPEM, err = ca.sign(&x509.Certificate{
		Subject:     pkix.Name{CommonName: name},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil, nil, fmt.Errorf("signing the client certificate of %s: %w", name, err)
	}
	return certPEM, keyPEM, nil
}

// sign completes tmpl with a new key, a serial and its validity, and signs it.
func (ca *CA) sign(tmpl *x509.Certificate) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	end := time.Now().Add(Validity)
	if ca.Cert.NotAfter.Before(end) {
		end = ca.Cert.NotAfter
	}
	tmpl.SerialNumber = serial()
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), end
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), nil
}

// Valid reports whether a serving certificate is signed by a CA of bundle, names host, and is
// far (RenewBefore) from its end or its CA's.
func Valid(certPEM, keyPEM, bundle []byte, host string) bool {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return false
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return false
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(bundle) {
		return false
	}
	_, err = cert.Verify(x509.VerifyOptions{DNSName: host, Roots: roots, CurrentTime: time.Now().Add(RenewBefore)})
	return err == nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126)) // crypto/rand does not fail
	return n
}
