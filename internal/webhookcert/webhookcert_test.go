package webhookcert_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"runservice.dev/runservice/internal/manager"
	"runservice.dev/runservice/internal/testenv"
	"runservice.dev/runservice/internal/webhookcert"
)

// TestEnsure: the first replica issues the certificates into a Secret, writes them for the webhook
// server and sets the caBundle; a second replica reuses them; a certificate for another Service name is
// replaced, signed by the same CA.
func TestEnsure(t *testing.T) {
	ctx := context.Background()
	c, vwc := start(t)
	replica := func(dir, service string) *webhookcert.Manager {
		return &webhookcert.Manager{
			Client: c, Namespace: "runservice-system", Secret: "runservice-webhook-cert",
			Service: service, WebhookConfiguration: "test-vwc", CertDir: dir,
		}
	}
	dir1, dir2 := t.TempDir(), t.TempDir()
	if err := replica(dir1, "runservice-webhook-service").Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	if err := replica(dir2, "runservice-webhook-service").Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	crt1, _ := os.ReadFile(filepath.Join(dir1, "tls.crt"))
	crt2, _ := os.ReadFile(filepath.Join(dir2, "tls.crt"))
	if len(crt1) == 0 || string(crt1) != string(crt2) {
		t.Fatal("the replicas do not serve the same certificate")
	}
	if err := c.Get(ctx, client.ObjectKeyFromObject(vwc), vwc); err != nil {
		t.Fatal(err)
	}
	verify(t, dir1, vwc.Webhooks[0].ClientConfig.CABundle, "runservice-webhook-service.runservice-system.svc")

	// A certificate that does not name the Service is replaced, under the same CA.
	other := t.TempDir()
	if err := replica(other, "renamed-service").Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	verify(t, other, vwc.Webhooks[0].ClientConfig.CABundle, "renamed-service.runservice-system.svc")
}

// TestAPIServiceCABundle: the archive API, served behind the webhook's Service with its
// certificate, gets its APIService's caBundle kept too, and so does the defaulting webhook.
func TestAPIServiceCABundle(t *testing.T) {
	ctx := context.Background()
	c, vwc := start(t)
	v := vwc.Webhooks[0]
	mwc := &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "test-mwc"},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name: "mtest.runservice.dev", ClientConfig: v.ClientConfig, Rules: v.Rules, FailurePolicy: v.FailurePolicy,
			SideEffects: v.SideEffects, AdmissionReviewVersions: v.AdmissionReviewVersions,
		}},
	}
	if err := c.Create(ctx, mwc); err != nil {
		t.Fatal(err)
	}
	svc := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
		"metadata": map[string]any{"name": "v1.test.runservice.dev"},
		"spec": map[string]any{
			"group": "test.runservice.dev", "version": "v1", "groupPriorityMinimum": int64(10), "versionPriority": int64(10),
			"service": map[string]any{"namespace": "runservice-system", "name": "runservice-webhook-service", "port": int64(8443)},
		},
	}}
	if err := c.Create(ctx, svc); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	m := &webhookcert.Manager{
		Client: c, Namespace: "runservice-system", Secret: "runservice-webhook-cert",
		Service: "runservice-webhook-service", WebhookConfiguration: vwc.Name, MutatingWebhookConfiguration: mwc.Name,
		CertDir: dir, APIService: svc.GetName(),
	}
	if err := m.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Get(ctx, client.ObjectKeyFromObject(mwc), mwc); err != nil {
		t.Fatal(err)
	}
	verify(t, dir, mwc.Webhooks[0].ClientConfig.CABundle, "runservice-webhook-service.runservice-system.svc")
	if err := c.Get(ctx, client.ObjectKeyFromObject(svc), svc); err != nil {
		t.Fatal(err)
	}
	encoded, _, _ := unstructured.NestedString(svc.Object, "spec", "caBundle")
	bundle, err := base64.StdEncoding.DecodeString(encoded)
	if err != nil {
		t.Fatal(err)
	}
	verify(t, dir, bundle, "runservice-webhook-service.runservice-system.svc")
}

func verify(t *testing.T, dir string, ca []byte, name string) {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"))
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(ca) {
		t.Fatal("the caBundle holds no certificate")
	}
	if _, err := cert.Verify(x509.VerifyOptions{DNSName: name, Roots: roots}); err != nil {
		t.Fatalf("the serving certificate does not verify for %s against the caBundle: %v", name, err)
	}
}

// TestCARotation: when one replica replaces a CA that nears its end, the other replica still serves
// the certificate the old CA signed until it next reads the Secret (every 12 hours). The caBundle must
// trust both meanwhile, or the apiserver refuses every call that lands on that replica.
func TestCARotation(t *testing.T) {
	ctx := context.Background()
	c, vwc := start(t)
	// A Secret as an earlier replica left it: a CA with 10 days left, a serving certificate it signed.
	const service = "runservice-webhook-service"
	dnsName := service + ".runservice-system.svc"
	caCert, caKey := testCA(t, 10*24*time.Hour)
	certPEM, keyPEM := testServingCert(t, caCert, caKey, dnsName, 9*24*time.Hour)
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "runservice-webhook-cert", Namespace: "runservice-system"},
		Type:       corev1.SecretTypeTLS,
		Data: map[string][]byte{
			"ca.crt": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caCert.Raw}),
			"ca.key": pemECKey(t, caKey), "tls.crt": certPEM, "tls.key": keyPEM,
		},
	}
	if err := c.Create(ctx, secret); err != nil {
		t.Fatal(err)
	}
	// The second replica still serves the old certificate (as it wrote it at its start).
	stale := t.TempDir()
	if err := os.WriteFile(filepath.Join(stale, "tls.crt"), certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(stale, "tls.key"), keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}

	fresh := t.TempDir()
	rotator := &webhookcert.Manager{
		Client: c, Namespace: "runservice-system", Secret: "runservice-webhook-cert",
		Service: service, WebhookConfiguration: vwc.Name, CertDir: fresh,
	}
	if err := rotator.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Get(ctx, client.ObjectKeyFromObject(vwc), vwc); err != nil {
		t.Fatal(err)
	}
	bundle := vwc.Webhooks[0].ClientConfig.CABundle
	verify(t, fresh, bundle, dnsName)
	if crt, _ := os.ReadFile(filepath.Join(fresh, "tls.crt")); string(crt) == string(certPEM) {
		t.Fatal("the CA near its end was not replaced")
	}
	// The replica that has not read the Secret yet must still be trusted.
	verify(t, stale, bundle, dnsName)

	// Ensure again (any replica, later): the old CA stays trusted while it is valid.
	if err := rotator.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Get(ctx, client.ObjectKeyFromObject(vwc), vwc); err != nil {
		t.Fatal(err)
	}
	verify(t, stale, vwc.Webhooks[0].ClientConfig.CABundle, dnsName)
}

// start starts a control plane with the manager's namespace and a webhook configuration to keep.
func start(t *testing.T) (client.Client, *admissionregistrationv1.ValidatingWebhookConfiguration) {
	t.Helper()
	env, err := testenv.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	c, err := client.New(env.Config, client.Options{Scheme: manager.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "runservice-system"}}); err != nil {
		t.Fatal(err)
	}
	vwc := &admissionregistrationv1.ValidatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "test-vwc"},
		Webhooks: []admissionregistrationv1.ValidatingWebhook{{
			Name: "vtest.runservice.dev",
			ClientConfig: admissionregistrationv1.WebhookClientConfig{Service: &admissionregistrationv1.ServiceReference{
				Name: "runservice-webhook-service", Namespace: "runservice-system", Path: ptr.To("/validate"),
			}},
			Rules: []admissionregistrationv1.RuleWithOperations{{
				Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
				Rule:       admissionregistrationv1.Rule{APIGroups: []string{"example.invalid"}, APIVersions: []string{"v1"}, Resources: []string{"nothings"}},
			}},
			FailurePolicy:           ptr.To(admissionregistrationv1.Ignore),
			SideEffects:             ptr.To(admissionregistrationv1.SideEffectClassNone),
			AdmissionReviewVersions: []string{"v1"},
		}},
	}
	if err := c.Create(ctx, vwc); err != nil {
		t.Fatal(err)
	}
	return c, vwc
}

func testCA(t *testing.T, left time.Duration) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "old test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(left),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func testServingCert(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, name string, left time.Duration) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(left),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pemECKey(t, key)
}

func pemECKey(t *testing.T, key *ecdsa.PrivateKey) []byte {
	t.Helper()
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
}
