package webhookcert_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
