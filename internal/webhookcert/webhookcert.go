// Package webhookcert lets the manager serve its webhook without cert-manager: it keeps a CA and a
// serving certificate in a Secret (shared by all replicas, created by the first), writes them where
// the webhook server reads them (controller-runtime reloads changed files), points the
// webhook configurations' caBundle at the CA, and renews the certificates before they expire.
// The archive API, served behind the same Service, uses the same certificate: its APIService's
// caBundle is kept too.
package webhookcert

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"runservice.dev/runservice/internal/pki"
)

// Keys of the Secret: the CA's (pki), and the serving certificate's.
const (
	certKey = corev1.TLSCertKey
	keyKey  = corev1.TLSPrivateKeyKey
)

// Manager keeps the webhook's certificates.
type Manager struct {
	// Client reads live and writes.
	Client client.Client
	// Namespace and Secret hold the certificates; Service is the webhook's Service in Namespace.
	Namespace, Secret, Service string
	// WebhookConfiguration is the ValidatingWebhookConfiguration whose caBundle is kept.
	WebhookConfiguration string
	// MutatingWebhookConfiguration, when set, is a MutatingWebhookConfiguration whose caBundle is
	// kept too.
	MutatingWebhookConfiguration string
	// CertDir is where tls.crt and tls.key are written for the webhook server.
	CertDir string
	// APIService, when set, is an APIService served through Service whose caBundle is kept too.
	APIService string
}

// By name only: the Secret config/selfsigned passes as --webhook-cert-secret, in the manager's own
// namespace, and the webhook configuration of config/webhook. RBAC cannot limit a create to a name;
// creating a Secret in the manager's own namespace grants nothing the manager does not hold.
// +kubebuilder:rbac:groups="",namespace=system,resources=secrets,verbs=get;update,resourceNames=runservice-webhook-cert
// +kubebuilder:rbac:groups="",namespace=system,resources=secrets,verbs=create
// +kubebuilder:rbac:groups=admissionregistration.k8s.io,resources=validatingwebhookconfigurations,verbs=get;patch,resourceNames=runservice-validating-webhook-configuration
// +kubebuilder:rbac:groups=admissionregistration.k8s.io,resources=mutatingwebhookconfigurations,verbs=get;patch,resourceNames=runservice-mutating-webhook-configuration
// +kubebuilder:rbac:groups=apiregistration.k8s.io,resources=apiservices,verbs=patch,resourceNames=v1alpha1.archive.runservice.dev

// Ensure makes the certificates valid, written and trusted. It is safe to run from every replica.
func (m *Manager) Ensure(ctx context.Context) error {
	secret, err := m.secret(ctx)
	if err != nil {
		return err
	}
	for k, name := range map[string]string{certKey: "tls.crt", keyKey: "tls.key"} {
		if err := writeIfChanged(filepath.Join(m.CertDir, name), secret.Data[k]); err != nil {
			return err
		}
	}
	return m.patchCABundle(ctx, pki.Bundle(secret.Data))
}

// Run renews the certificates (Ensure) every interval until ctx ends.
func (m *Manager) Run(ctx context.Context, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := m.Ensure(ctx); err != nil {
				ctrl.LoggerFrom(ctx).Error(err, "renewing the webhook certificate")
			}
		}
	}
}

// secret returns the Secret with valid certificates, creating or renewing it.
func (m *Manager) secret(ctx context.Context) (*corev1.Secret, error) {
	key := types.NamespacedName{Namespace: m.Namespace, Name: m.Secret}
	s := &corev1.Secret{}
	err := m.Client.Get(ctx, key, s)
	switch {
	case apierrors.IsNotFound(err):
		s = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: m.Secret, Namespace: m.Namespace}, Type: corev1.SecretTypeTLS}
		if s.Data, err = m.issue(nil); err != nil {
			return nil, err
		}
		if err := m.Client.Create(ctx, s); apierrors.IsAlreadyExists(err) {
			return m.secret(ctx) // another replica was first: use its certificates
		} else if err != nil {
			return nil, fmt.Errorf("creating secret %s: %w", key, err)
		}
		return s, nil
	case err != nil:
		return nil, fmt.Errorf("reading secret %s: %w", key, err)
	}
	if m.valid(s.Data) {
		return s, nil
	}
	if s.Data, err = m.issue(s.Data); err != nil {
		return nil, err
	}
	if err := m.Client.Update(ctx, s); apierrors.IsConflict(err) {
		return m.secret(ctx)
	} else if err != nil {
		return nil, fmt.Errorf("renewing secret %s: %w", key, err)
	}
	return s, nil
}

func (m *Manager) dnsNames() []string {
	return []string{m.Service + "." + m.Namespace + ".svc", m.Service + "." + m.Namespace + ".svc.cluster.local"}
}

// valid reports whether the serving certificate is signed by the CA, names the Service, and is far
// from its end.
func (m *Manager) valid(data map[string][]byte) bool {
	return pki.Valid(data[certKey], data[keyKey], data[pki.CACertKey], m.dnsNames()[0])
}

// issue makes a serving certificate, signed by the existing CA when it is still good, else by a new one.
func (m *Manager) issue(old map[string][]byte) (map[string][]byte, error) {
	ca, data, _, err := pki.Renew(old, "runservice webhook CA")
	if err != nil {
		return nil, err
	}
	data = maps.Clone(data)
	if data[certKey], data[keyKey], err = ca.Issue(m.dnsNames()); err != nil {
		return nil, err
	}
	return data, nil
}

// patchCABundle sets the caBundle of the configurations' webhooks that call the Service.
func (m *Manager) patchCABundle(ctx context.Context, ca []byte) error {
	vwc := &admissionregistrationv1.ValidatingWebhookConfiguration{}
	if err := m.patchWebhooks(ctx, vwc, m.WebhookConfiguration, ca, func() []*admissionregistrationv1.WebhookClientConfig {
		return clientConfigs(vwc.Webhooks, func(w *admissionregistrationv1.ValidatingWebhook) *admissionregistrationv1.WebhookClientConfig {
			return &w.ClientConfig
		})
	}); err != nil {
		return err
	}
	if m.MutatingWebhookConfiguration != "" {
		mwc := &admissionregistrationv1.MutatingWebhookConfiguration{}
		if err := m.patchWebhooks(ctx, mwc, m.MutatingWebhookConfiguration, ca, func() []*admissionregistrationv1.WebhookClientConfig {
			return clientConfigs(mwc.Webhooks, func(w *admissionregistrationv1.MutatingWebhook) *admissionregistrationv1.WebhookClientConfig {
				return &w.ClientConfig
			})
		}); err != nil {
			return err
		}
	}
	if m.APIService == "" {
		return nil
	}
	svc := &unstructured.Unstructured{}
	svc.SetAPIVersion("apiregistration.k8s.io/v1")
	svc.SetKind("APIService")
	svc.SetName(m.APIService)
	patch, err := json.Marshal(map[string]any{"spec": map[string]any{"caBundle": ca}})
	if err != nil {
		return err
	}
	if err := m.Client.Patch(ctx, svc, client.RawPatch(types.MergePatchType, patch)); err != nil {
		return fmt.Errorf("setting the caBundle of APIService %s: %w", m.APIService, err)
	}
	return nil
}

// patchWebhooks reads the webhook configuration name into cfg and sets, with one patch, the caBundle
// of those of its webhooks (configs lists their client configurations) that call the Service.
func (m *Manager) patchWebhooks(ctx context.Context, cfg client.Object, name string, ca []byte, configs func() []*admissionregistrationv1.WebhookClientConfig) error {
	if err := m.Client.Get(ctx, types.NamespacedName{Name: name}, cfg); err != nil {
		return fmt.Errorf("reading webhook configuration %s: %w", name, err)
	}
	base := cfg.DeepCopyObject().(client.Object)
	for _, c := range configs() {
		if svc := c.Service; svc != nil && svc.Name == m.Service && svc.Namespace == m.Namespace {
			c.CABundle = ca
		}
	}
	if err := m.Client.Patch(ctx, cfg, client.MergeFrom(base)); err != nil {
		return fmt.Errorf("setting the caBundle of %s: %w", name, err)
	}
	return nil
}

// clientConfigs are the client configurations of a configuration's webhooks, to set in place.
func clientConfigs[W any](hooks []W, of func(*W) *admissionregistrationv1.WebhookClientConfig) []*admissionregistrationv1.WebhookClientConfig {
	out := make([]*admissionregistrationv1.WebhookClientConfig, len(hooks))
	for i := range hooks {
		out[i] = of(&hooks[i])
	}
	return out
}

func writeIfChanged(path string, data []byte) error {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
