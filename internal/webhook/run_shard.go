package webhook

import (
	"gomodules.xyz/jsonpatch/v2"

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
