package webhook

import (
	"context"
	"errors"
	"fmt"
	"time"

	"gomodules.xyz/jsonpatch/v2"
	authenticationv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/shard"
)

// shardLabels assigns a run being created to the shard ring's owner of its key (namespace/name),
// as the label rsv1.LabelShard, so that the owner's cache holds it from its first version and no
// other replica ever sees it: it adds the label to labels (what metaPatch adds) and returns the
// operations that replace or remove the run's own. A run whose name is not known yet (generateName:
// the apiserver names it after admission) or created while the ring is empty is left unlabelled,
// for the leader's sharder to assign; a shard label or a drain its author wrote is replaced or
// removed: who owns a run is the ring's to say.
func shardLabels(run *rsv1.Run, namespace string, view shard.View, labels map[string]string) []jsonpatch.JsonPatchOperation {
	if view == nil {
		return nil
	}
	owner := ""
	if run.Name != "" {
		owner = view.Ring().Owner(shard.Key(namespace, run.Name))
	}
	var ops []jsonpatch.JsonPatchOperation
	have, labelled := run.Labels[rsv1.LabelShard]
	switch {
	case owner != "" && !labelled:
		labels[rsv1.LabelShard] = owner
	case owner == "" && labelled:
		ops = append(ops, jsonpatch.NewOperation("remove", labelPath(rsv1.LabelShard), nil))
	case owner != "" && have != owner:
		ops = append(ops, jsonpatch.NewOperation("replace", labelPath(rsv1.LabelShard), owner))
	}
	if _, ok := run.Labels[rsv1.LabelShardDrain]; ok {
		ops = append(ops, jsonpatch.NewOperation("remove", labelPath(rsv1.LabelShardDrain), nil))
	}
	return ops
}

func labelPath(key string) string { return "/metadata/labels/" + pointerEscape.Replace(key) }

// shardLabelChanges refuses an update of a run that adds, edits or removes LabelShard or
// LabelShardDrain by any user but the manager's own (every replica runs as the same user): who
// owns a run is the ring's to say, and changing it by hand would bypass the drain, letting two
// replicas act on the run at once. Patches and full updates alike are judged on the run they
// produce: a kubectl replace without the label removes it, and is refused; a kubectl apply of a
// manifest that never carried it leaves it alone, and passes.
func shardLabelChanges(old, run *rsv1.Run, user, manager string) field.ErrorList {
	if user == manager {
		return nil
	}
	var errs field.ErrorList
	for _, k := range []string{rsv1.LabelShard, rsv1.LabelShardDrain} {
		was, had := old.Labels[k]
		is, has := run.Labels[k]
		if had == has && was == is {
			continue
		}
		errs = append(errs, field.Forbidden(field.NewPath("metadata", "labels").Key(k), fmt.Sprintf(
			"may be added, changed or removed only by the manager (user %q), not by %q: the shard ring assigns and moves runs, "+
				"and a run moved by hand could be acted on by two replicas at once", manager, user)))
	}
	return errs
}

// +kubebuilder:rbac:groups=authentication.k8s.io,resources=selfsubjectreviews,verbs=create

// Self returns the user the manager's requests are made as (an authentication.k8s.io/v1
// SelfSubjectReview, which every authenticated user may create by default, through the
// system:basic-user role): the only user the Run webhook lets change a run's shard labels. It
// retries what may be passing (the apiserver starting, a timeout) for up to a minute; an error
// means the manager must not serve the webhook, rather than let everyone through or refuse its own
// handovers.
func Self(ctx context.Context, cfg *rest.Config) (string, error) {
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return "", fmt.Errorf("learning the manager's own user: %w", err)
	}
	var user string
	var last error
	err = wait.PollUntilContextTimeout(ctx, time.Second, time.Minute, true, func(ctx context.Context) (bool, error) {
		r, err := cs.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
		switch {
		case err == nil && r.Status.UserInfo.Username != "":
			user = r.Status.UserInfo.Username
			return true, nil
		case err == nil:
			return false, errors.New("the review names no user")
		case apierrors.IsForbidden(err) || apierrors.IsNotFound(err):
			return false, err // no retry helps: the RBAC rule or the API is missing
		}
		last = err
		return false, nil
	})
	if err != nil {
		if last != nil && !apierrors.IsForbidden(err) && !apierrors.IsNotFound(err) {
			err = last
		}
		return "", fmt.Errorf("learning the manager's own user (create authentication.k8s.io/v1 selfsubjectreviews, "+
			"allowed to every authenticated user by the system:basic-user role): %w; without it the Run webhook "+
			"cannot tell the manager's changes of %s from anyone else's", err, rsv1.LabelShard)
	}
	return user, nil
}
