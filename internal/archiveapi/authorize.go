package archiveapi

import (
	"context"
	"fmt"

	"k8s.io/apiserver/pkg/authorization/authorizer"

	arv1 "runservice.dev/runservice/api/archive/v1alpha1"
	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

// asRuns authorizes a request for archived runs as the same request for runs, of the cluster's
// authorizer (a SubjectAccessReview): whoever may list runs in a namespace may list its archived
// runs, whoever may get a run by name may get its archived runs, and no one else. One RBAC fact
// to keep, for any Role or ClusterRole, rather than a second resource to grant beside every grant
// of runs. Any other request (discovery, health) is authorized as it is.
type asRuns struct{ authorizer.Authorizer }

func (a asRuns) Authorize(ctx context.Context, attrs authorizer.Attributes) (authorizer.Decision, string, error) {
	if !attrs.IsResourceRequest() || attrs.GetAPIGroup() != arv1.GroupVersion.Group || attrs.GetResource() != resource {
		return a.Authorizer.Authorize(ctx, attrs)
	}
	run := authorizer.AttributesRecord{
		User:            attrs.GetUser(),
		Verb:            attrs.GetVerb(),
		Namespace:       attrs.GetNamespace(),
		APIGroup:        rsv1.GroupVersion.Group,
		APIVersion:      rsv1.GroupVersion.Version,
		Resource:        "runs",
		Subresource:     attrs.GetSubresource(),
		Name:            attrs.GetName(),
		ResourceRequest: true,
		Path:            attrs.GetPath(),
	}
	// Live runs carry the same labels: a selector on them means the same.
	run.LabelSelectorRequirements, run.LabelSelectorParsingErr = attrs.GetLabelSelector()
	decision, reason, err := a.Authorizer.Authorize(ctx, run)
	if decision != authorizer.DecisionAllow {
		where := "in namespace " + attrs.GetNamespace()
		if attrs.GetNamespace() == "" {
			where = "in all namespaces"
		}
		reason = fmt.Sprintf("archived runs are authorized as runs, and %s runs.%s %s is not allowed%s",
			attrs.GetVerb(), rsv1.GroupVersion.Group, where, suffix(reason))
	}
	return decision, reason, err
}

func suffix(reason string) string {
	if reason == "" {
		return ""
	}
	return ": " + reason
}
