package testenv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	arv1 "runservice.dev/runservice/api/archive/v1alpha1"
	"runservice.dev/runservice/internal/archiveapi"
	"runservice.dev/runservice/internal/pki"
)

// The front proxy: the client certificate the apiserver presents to aggregated API servers, and
// the headers that carry the user it authenticated.
const frontProxyUser = "front-proxy-client"

// configureAggregation makes the apiserver an aggregator, as kubeadm configures one: a front-proxy
// CA and client certificate in dir (the apiserver publishes the CA and headers in
// kube-system/extension-apiserver-authentication for aggregated servers to trust). No kube-proxy
// runs here, so the apiserver dials an APIService's endpoints itself (aggregator routing).
func configureAggregation(env *envtest.Environment, dir string) error {
	ca, err := pki.NewCA("runservice test front-proxy CA")
	if err != nil {
		return err
	}
	crt, key, err := ca.IssueClient(frontProxyUser)
	if err != nil {
		return err
	}
	files := map[string][]byte{"front-proxy-ca.crt": ca.CertPEM(), "front-proxy-client.crt": crt, "front-proxy-client.key": key}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return err
		}
	}
	args := env.ControlPlane.GetAPIServer().Configure()
	args.Set("requestheader-client-ca-file", filepath.Join(dir, "front-proxy-ca.crt"))
	args.Set("proxy-client-cert-file", filepath.Join(dir, "front-proxy-client.crt"))
	args.Set("proxy-client-key-file", filepath.Join(dir, "front-proxy-client.key"))
	args.Set("requestheader-allowed-names", frontProxyUser)
	args.Set("requestheader-username-headers", "X-Remote-User")
	args.Set("requestheader-uid-headers", "X-Remote-Uid")
	args.Set("requestheader-group-headers", "X-Remote-Group")
	args.Set("requestheader-extra-headers-prefix", "X-Remote-Extra-")
	args.Set("enable-aggregator-routing", "true")
	return nil
}

// Where the archive API is registered: the Service the APIService names, as config/ deploys it.
const (
	ArchiveAPINamespace = "runservice-system"
	ArchiveAPIService   = "runservice-webhook-service"
	archiveAPIPort      = 8443
)

// ArchiveAPI registers the archive API with the control plane and returns where the manager
// serves it: the APIService v1alpha1.archive.runservice.dev, its Service with an EndpointSlice at
// this host's first non-loopback address (endpoints refuse loopback ones) and a free port there, a
// serving certificate for the Service in a directory and its CA as the caBundle, and the RBAC of
// config/rbac/archive_reader.yaml. Every call returns the same registration; the caller adds the
// index and the object store.
func (e *Env) ArchiveAPI(ctx context.Context) (archiveapi.Options, error) {
	if e.archiveAPI != nil {
		return *e.archiveAPI, nil
	}
	host, err := hostAddress()
	if err != nil {
		return archiveapi.Options{}, err
	}
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return archiveapi.Options{}, fmt.Errorf("finding a free port on %s: %w", host, err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()

	ca, err := pki.NewCA("runservice test archive API CA")
	if err != nil {
		return archiveapi.Options{}, err
	}
	svcDNS := ArchiveAPIService + "." + ArchiveAPINamespace + ".svc"
	crt, key, err := ca.Issue([]string{svcDNS})
	if err != nil {
		return archiveapi.Options{}, err
	}
	certDir := filepath.Join(e.dir, "archive-api")
	if err := os.MkdirAll(certDir, 0o700); err != nil {
		return archiveapi.Options{}, err
	}
	for name, data := range map[string][]byte{"tls.crt": crt, "tls.key": key} {
		if err := os.WriteFile(filepath.Join(certDir, name), data, 0o600); err != nil {
			return archiveapi.Options{}, err
		}
	}

	c, err := client.New(e.Config, client.Options{})
	if err != nil {
		return archiveapi.Options{}, err
	}
	objs := []client.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ArchiveAPINamespace}},
		// No selector: the manager runs in this process, not in a pod.
		&corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: ArchiveAPIService, Namespace: ArchiveAPINamespace},
			Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{
				{Name: "archive-api", Port: archiveAPIPort, TargetPort: intstr.FromInt(port)},
			}},
		},
		&discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{
				Name: ArchiveAPIService, Namespace: ArchiveAPINamespace,
				Labels: map[string]string{discoveryv1.LabelServiceName: ArchiveAPIService},
			},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{host}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("archive-api"), Port: ptr.To(int32(port)), Protocol: ptr.To(corev1.ProtocolTCP)}},
		},
		apiService(ArchiveAPINamespace, ArchiveAPIService, archiveAPIPort, ca.CertPEM()),
	}
	rbac, err := decodeAll(filepath.Join(e.Root, "config", "rbac", "archive_reader.yaml"))
	if err != nil {
		return archiveapi.Options{}, err
	}
	for _, o := range append(objs, rbac...) {
		if err := c.Create(ctx, o); err != nil && !apierrors.IsAlreadyExists(err) {
			return archiveapi.Options{}, fmt.Errorf("registering the archive API: creating %s %s: %w", o.GetObjectKind().GroupVersionKind().Kind, o.GetName(), err)
		}
	}
	e.archiveAPI = &archiveapi.Options{Host: host, Port: port, CertDir: certDir}
	return *e.archiveAPI, nil
}

// apiService is the APIService of the archive API, served by the Service namespace/name at port
// with a certificate that caBundle trusts; what config/archiveapi/apiservice.yaml deploys.
func apiService(namespace, name string, port int32, caBundle []byte) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apiregistration.k8s.io/v1",
		"kind":       "APIService",
		"metadata":   map[string]any{"name": arv1.GroupVersion.Version + "." + arv1.GroupVersion.Group},
		"spec": map[string]any{
			"group":                arv1.GroupVersion.Group,
			"version":              arv1.GroupVersion.Version,
			"groupPriorityMinimum": int64(1000),
			"versionPriority":      int64(15),
			"caBundle":             caBundle,
			"service":              map[string]any{"namespace": namespace, "name": name, "port": int64(port)},
		},
	}}
	return u
}

// hostAddress is an address of this host that endpoints accept: its first non-loopback IPv4.
func hostAddress() (string, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return "", err
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() && !n.IP.IsLinkLocalUnicast() {
			return n.IP.String(), nil
		}
	}
	return "", errors.New("this host has no non-loopback IPv4 address for the archive API's endpoints (EndpointSlices refuse loopback ones)")
}

// decodeAll reads the objects of a YAML file.
func decodeAll(path string) ([]client.Object, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	dec := yaml.NewYAMLOrJSONDecoder(f, 4096)
	var out []client.Object
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return nil, fmt.Errorf("decoding %s: %w", path, err)
		}
		if len(u.Object) > 0 {
			out = append(out, u)
		}
	}
}
