package archiveapi

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"

	arv1 "runservice.dev/runservice/api/archive/v1alpha1"
)

// The server's scheme and codecs. ArchivedRun has one version, which is also the internal one the
// generic server converts through: the same Go types, so nothing is ever converted.
var (
	scheme = newScheme()
	codecs = serializer.NewCodecFactory(scheme)
)

func newScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	must := func(err error) {
		if err != nil {
			panic(err) // static registrations: a failure is a programming error, caught by any test
		}
	}
	must(arv1.AddToScheme(s))
	internal := schema.GroupVersion{Group: arv1.GroupVersion.Group, Version: runtime.APIVersionInternal}
	s.AddKnownTypes(internal, &arv1.ArchivedRun{}, &arv1.ArchivedRunList{})
	must(s.AddFieldLabelConversionFunc(arv1.GroupVersion.WithKind("ArchivedRun"), convertFieldLabel))
	// The generic server decodes list and get options as meta/v1, and serves Status and discovery.
	metav1.AddToGroupVersion(s, schema.GroupVersion{Version: "v1"})
	s.AddUnversionedTypes(schema.GroupVersion{Version: "v1"},
		&metav1.Status{}, &metav1.APIVersions{}, &metav1.APIGroupList{}, &metav1.APIGroup{}, &metav1.APIResourceList{})
	return s
}
