package archiveapi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	openapinamer "k8s.io/apiserver/pkg/endpoints/openapi"
	"k8s.io/apiserver/pkg/registry/rest"
	genericapiserver "k8s.io/apiserver/pkg/server"
	genericoptions "k8s.io/apiserver/pkg/server/options"
	utilcompatibility "k8s.io/apiserver/pkg/util/compatibility"
	clientrest "k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	arv1 "runservice.dev/runservice/api/archive/v1alpha1"
	"runservice.dev/runservice/internal/objectstore"
	"runservice.dev/runservice/pkg/generated/openapi"
)

// Options configure the archive API server.
type Options struct {
	// Host and Port are where it listens ("" for every interface).
	Host string
	Port int
	// CertDir holds its serving certificate, tls.crt and tls.key, reloaded when they change; the
	// APIService's caBundle must trust it.
	CertDir string
	// Index answers the lists (nil: lists are empty with a warning, gets a 503, saying there is no
	// index); Store holds the documents.
	Index Index
	Store *objectstore.Store
	// Ready reports whether Index has caught up with the archive (nil: always); until then reads
	// are 503s, since a list of a half-rebuilt index would leave runs out.
	Ready func() bool
}

// Server is the archive API server: run it on every replica (it needs no leader).
type Server struct {
	prepared interface{ RunWithContext(context.Context) error }
}

// New builds the server; cfg is how it reaches the cluster's apiserver to delegate authentication
// (TokenReview, and the front proxy's CA from kube-system/extension-apiserver-authentication) and
// authorization (SubjectAccessReview).
func New(cfg *clientrest.Config, opts Options) (*Server, error) {
	if opts.Store == nil {
		return nil, errors.New("the archive API needs the archive's object store")
	}
	if opts.CertDir == "" {
		return nil, errors.New("the archive API needs a serving certificate (tls.crt and tls.key in a directory)")
	}
	c := genericapiserver.NewConfig(codecs)
	c.EffectiveVersion = utilcompatibility.DefaultBuildEffectiveVersion()
	c.EnableProfiling = false
	c.EnableMetrics = false // the manager's metrics are controller-runtime's, on their own port
	namer := openapinamer.NewDefinitionNamer(scheme)
	c.OpenAPIConfig = genericapiserver.DefaultOpenAPIConfig(openapi.GetOpenAPIDefinitions, namer)
	c.OpenAPIConfig.Info.Title, c.OpenAPIConfig.Info.Version = "runservice archive", arv1.GroupVersion.Version
	c.OpenAPIV3Config = genericapiserver.DefaultOpenAPIV3Config(openapi.GetOpenAPIDefinitions, namer)
	c.OpenAPIV3Config.Info.Title, c.OpenAPIV3Config.Info.Version = "runservice archive", arv1.GroupVersion.Version
	c.BuildHandlerChainFunc = func(h http.Handler, c *genericapiserver.Config) http.Handler {
		return genericapiserver.DefaultBuildHandlerChain(withTableRequests(h), c)
	}

	// The generic server calls itself through a loopback client, with a certificate of its own.
	serving := genericoptions.NewSecureServingOptions().WithLoopback()
	serving.BindPort = opts.Port
	if opts.Host != "" {
		if serving.BindAddress = net.ParseIP(opts.Host); serving.BindAddress == nil {
			return nil, fmt.Errorf("archive API host %q: not an IP address", opts.Host)
		}
	}
	serving.ServerCert.CertKey = genericoptions.CertKey{
		CertFile: filepath.Join(opts.CertDir, "tls.crt"),
		KeyFile:  filepath.Join(opts.CertDir, "tls.key"),
	}
	if err := serving.ApplyTo(&c.SecureServing, &c.LoopbackClientConfig); err != nil {
		return nil, fmt.Errorf("archive API serving on port %d: %w", opts.Port, err)
	}
	if err := delegate(cfg, c); err != nil {
		_ = c.SecureServing.Listener.Close()
		return nil, err
	}

	s, err := c.Complete(nil).New("runservice-archive", genericapiserver.NewEmptyDelegate())
	if err != nil {
		_ = c.SecureServing.Listener.Close()
		return nil, fmt.Errorf("building the archive API server: %w", err)
	}
	group := genericapiserver.NewDefaultAPIGroupInfo(arv1.GroupVersion.Group, scheme, metav1.ParameterCodec, codecs)
	group.VersionedResourcesStorageMap[arv1.GroupVersion.Version] = map[string]rest.Storage{
		resource: &archivedRuns{index: opts.Index, store: opts.Store, ready: opts.Ready},
	}
	if err := s.InstallAPIGroup(&group); err != nil {
		_ = c.SecureServing.Listener.Close()
		return nil, fmt.Errorf("installing %s: %w", arv1.GroupVersion, err)
	}
	return &Server{prepared: s.PrepareRun()}, nil
}

// Start serves until ctx ends.
func (s *Server) Start(ctx context.Context) error { return s.prepared.RunWithContext(ctx) }

// NeedLeaderElection is false: every replica serves reads.
func (*Server) NeedLeaderElection() bool { return false }

// What delegating needs: the two rules of system:auth-delegator, and the front proxy's CA and
// headers. The ConfigMap is granted by name in a ClusterRole rather than with a RoleBinding in
// kube-system, which the namespace of config/'s kustomizations would move.
// +kubebuilder:rbac:groups=authentication.k8s.io,resources=tokenreviews,verbs=create
// +kubebuilder:rbac:groups=authorization.k8s.io,resources=subjectaccessreviews,verbs=create
// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get;list;watch,resourceNames=extension-apiserver-authentication

// delegate makes the cluster's apiserver authenticate and authorize the server's requests, with
// archived runs authorized as runs (asRuns). The generic server's delegating options connect with
// the in-cluster config, or a kubeconfig file: out of a cluster, cfg is written into a private one
// for as long as they read it (in a pod, whose root filesystem is read-only, nothing is written).
func delegate(cfg *clientrest.Config, c *genericapiserver.Config) error {
	authn := genericoptions.NewDelegatingAuthenticationOptions()
	authz := genericoptions.NewDelegatingAuthorizationOptions()
	if in, err := clientrest.InClusterConfig(); err != nil || in.Host != cfg.Host {
		dir, err := os.MkdirTemp("", "runservice-archive-api-")
		if err != nil {
			return err
		}
		defer func() { _ = os.RemoveAll(dir) }()
		kubeconfig := filepath.Join(dir, "kubeconfig")
		if err := clientcmd.WriteToFile(kubeconfigOf(cfg), kubeconfig); err != nil {
			return fmt.Errorf("writing the archive API's kubeconfig: %w", err)
		}
		authn.RemoteKubeConfigFile, authz.RemoteKubeConfigFile = kubeconfig, kubeconfig
	}
	if err := authn.ApplyTo(&c.Authentication, c.SecureServing, c.OpenAPIConfig); err != nil {
		return fmt.Errorf("delegating the archive API's authentication to the cluster (its apiserver must aggregate APIs: --requestheader-client-ca-file and --proxy-client-cert-file; or turn the archive API off): %w", err)
	}
	if err := authz.ApplyTo(&c.Authorization); err != nil {
		return fmt.Errorf("delegating the archive API's authorization to the cluster: %w", err)
	}
	c.Authorization.Authorizer = asRuns{c.Authorization.Authorizer}
	return nil
}

// kubeconfigOf is cfg as a kubeconfig: its server, TLS settings and credentials (files stay files,
// so that rotated tokens and certificates are read again).
func kubeconfigOf(cfg *clientrest.Config) clientcmdapi.Config {
	const name = "cluster"
	k := clientcmdapi.NewConfig()
	k.Clusters[name] = &clientcmdapi.Cluster{
		Server:                   cfg.Host + cfg.APIPath,
		CertificateAuthority:     cfg.CAFile,
		CertificateAuthorityData: cfg.CAData,
		TLSServerName:            cfg.ServerName,
		InsecureSkipTLSVerify:    cfg.Insecure,
		ProxyURL:                 "",
	}
	k.AuthInfos[name] = &clientcmdapi.AuthInfo{
		ClientCertificate:     cfg.CertFile,
		ClientCertificateData: cfg.CertData,
		ClientKey:             cfg.KeyFile,
		ClientKeyData:         cfg.KeyData,
		Token:                 cfg.BearerToken,
		TokenFile:             cfg.BearerTokenFile,
		Username:              cfg.Username,
		Password:              cfg.Password,
		Impersonate:           cfg.Impersonate.UserName,
		ImpersonateUID:        cfg.Impersonate.UID,
		ImpersonateGroups:     cfg.Impersonate.Groups,
		ImpersonateUserExtra:  cfg.Impersonate.Extra,
		Exec:                  cfg.ExecProvider,
		AuthProvider:          cfg.AuthProvider,
	}
	k.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: name}
	k.CurrentContext = name
	return *k
}

// APIService is the name of the APIService that registers this API with the cluster.
const APIService = "v1alpha1.archive.runservice.dev"
