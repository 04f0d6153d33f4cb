package webhook

import (
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/shard"
)

// TestShardLabels: the defaulting webhook labels a created run with the ring's owner of its key;
// leaves a run it cannot place (no name yet, an empty ring) to the sharder; replaces or removes a
// shard label or a drain the run's author wrote; and an unsharded manager adds nothing.
func TestShardLabels(t *testing.T) {
	ring := shard.NewStatic("m-a", "m-b", "m-c")
	owner := ring.Ring().Owner(shard.Key("ns", "build"))
	other := "m-a"
	if owner == other {
		other = "m-b"
	}
	tests := []struct {
		name   string
		run    string // the run's name; "" as with generateName
		labels map[string]string
		view   shard.View
		want   map[string]string
	}{
		{name: "named", run: "build", view: ring, want: map[string]string{rsv1.LabelShard: owner}},
		{name: "named, other labels", run: "build", labels: map[string]string{"team": "x"}, view: ring, want: map[string]string{"team": "x", rsv1.LabelShard: owner}},
		{name: "generateName", view: ring, want: nil},
		{name: "generateName with a label of its author", labels: map[string]string{rsv1.LabelShard: other}, view: ring, want: map[string]string{}},
		{name: "author's label replaced", run: "build", labels: map[string]string{rsv1.LabelShard: other, rsv1.LabelShardDrain: other}, view: ring, want: map[string]string{rsv1.LabelShard: owner}},
		{name: "empty ring", run: "build", view: shard.NewStatic(""), want: nil},
		{name: "unsharded", run: "build", labels: map[string]string{rsv1.LabelShard: other}, want: map[string]string{rsv1.LabelShard: other}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			run := &rsv1.Run{ObjectMeta: metav1.ObjectMeta{Name: tt.run, Namespace: "ns", Labels: maps.Clone(tt.labels)}}
			labels := map[string]string{}
			ops := shardLabels(run, "ns", tt.view, labels)
			patch, err := json.Marshal(append(metaPatch(run, nil, labels), ops...))
			if err != nil {
				t.Fatal(err)
			}
			doc, err := json.Marshal(run)
			if err != nil {
				t.Fatal(err)
			}
			p, err := jsonpatch.DecodePatch(patch)
			if err != nil {
				t.Fatal(err)
			}
			out, err := p.Apply(doc)
			if err != nil {
				t.Fatalf("applying %s: %v", patch, err)
			}
			var got rsv1.Run
			if err := json.Unmarshal(out, &got); err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(got.Labels, tt.want) || (tt.want == nil) != (got.Labels == nil) {
				t.Fatalf("labels %v, want %v (patch %s)", got.Labels, tt.want, patch)
			}
		})
	}
}

// TestShardLabelChanges: only the manager's user may add, edit or remove a run's shard labels;
// an update that leaves them as they were passes for anyone.
func TestShardLabelChanges(t *testing.T) {
	with := func(labels ...string) *rsv1.Run {
		r := &rsv1.Run{ObjectMeta: metav1.ObjectMeta{Name: "r", Labels: map[string]string{"team": "x"}}}
		for i := 0; i+1 < len(labels); i += 2 {
			r.Labels[labels[i]] = labels[i+1]
		}
		return r
	}
	tests := []struct {
		name     string
		old, run *rsv1.Run
		user     string
		want     []string // the fields refused
	}{
		{"unchanged", with(rsv1.LabelShard, "a"), with(rsv1.LabelShard, "a"), "alice", nil},
		{"other labels change", with(rsv1.LabelShard, "a"), with(rsv1.LabelShard, "a", "team", "y"), "alice", nil},
		{"edited", with(rsv1.LabelShard, "a"), with(rsv1.LabelShard, "b"), "alice", []string{"metadata.labels[runservice.dev/shard]"}},
		{"removed", with(rsv1.LabelShard, "a"), with(), "alice", []string{"metadata.labels[runservice.dev/shard]"}},
		{"added", with(), with(rsv1.LabelShard, "a"), "alice", []string{"metadata.labels[runservice.dev/shard]"}},
		{"emptied", with(rsv1.LabelShard, "a"), with(rsv1.LabelShard, ""), "alice", []string{"metadata.labels[runservice.dev/shard]"}},
		{"drain added", with(rsv1.LabelShard, "a"), with(rsv1.LabelShard, "a", rsv1.LabelShardDrain, "b"), "alice", []string{"metadata.labels[runservice.dev/shard-drain]"}},
		{"both removed", with(rsv1.LabelShard, "a", rsv1.LabelShardDrain, "b"), with(), "alice",
			[]string{"metadata.labels[runservice.dev/shard]", "metadata.labels[runservice.dev/shard-drain]"}},
		{"the manager acknowledges", with(rsv1.LabelShard, "a", rsv1.LabelShardDrain, "b"), with(), "system:serviceaccount:rs:manager", nil},
		{"the manager relabels", with(), with(rsv1.LabelShard, "b"), "system:serviceaccount:rs:manager", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			errs := shardLabelChanges(tt.old, tt.run, tt.user, "system:serviceaccount:rs:manager")
			var got []string
			for _, e := range errs {
				got = append(got, e.Field)
				if !strings.Contains(e.Error(), `user "system:serviceaccount:rs:manager"`) || !strings.Contains(e.Error(), `"alice"`) {
					t.Errorf("the refusal does not say who may change it and who tried: %v", e)
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("refused %v, want %v", got, tt.want)
			}
		})
	}
}
