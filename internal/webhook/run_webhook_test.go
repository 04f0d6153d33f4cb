package webhook

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

func TestCarriedToken(t *testing.T) {
	run := func(token ...string) *rsv1.Run {
		r := &rsv1.Run{ObjectMeta: metav1.ObjectMeta{Name: "r", Annotations: map[string]string{"other": "x"}}}
		for _, tok := range token {
			r.Annotations[rsv1.AnnotationUpdateToken] = tok
		}
		return r
	}
	tests := []struct {
		name        string
		old, run    *rsv1.Run
		wantCarried bool
		wantSpent   bool
	}{
		{name: "create with a token", run: run("7"), wantCarried: true},
		{name: "create with the empty token of a group not created yet", run: run(""), wantCarried: true},
		{name: "create without", run: run()},
		{name: "update adds a token", old: run(), run: run("7"), wantCarried: true},
		{name: "update replaces the stored token", old: run("7"), run: run("9"), wantCarried: true},
		{name: "update keeps the stored token (manager's write, plain patch)", old: run("7"), run: run("7"), wantSpent: true},
		{name: "update removes the token", old: run("7"), run: run()},
		{name: "update without any", old: run(), run: run()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, got := carriedToken(tt.old, tt.run); got != tt.wantCarried {
				t.Errorf("carried = %v, want %v", got, tt.wantCarried)
			}
			if tt.old != nil {
				if got := spentToken(tt.old, tt.run); got != tt.wantSpent {
					t.Errorf("spent = %v, want %v", got, tt.wantSpent)
				}
			}
		})
	}
}

// TestChange: a request's change is the same for the same run and spec, whatever its metadata, and
// differs with the run's uid or its spec; a run without a uid (not from the apiserver) names none.
func TestChange(t *testing.T) {
	run := func(uid, env string, labels map[string]string) *rsv1.Run {
		return &rsv1.Run{
			ObjectMeta: metav1.ObjectMeta{Name: "r", UID: types.UID(uid), Labels: labels, ResourceVersion: env},
			Spec:       rsv1.RunSpec{Environment: []rsv1.EnvVar{{Name: "A", Value: env}}},
		}
	}
	a := change(run("u1", "1", nil))
	if a == "" {
		t.Fatal("a run from the apiserver names no change")
	}
	if b := change(run("u1", "1", map[string]string{"x": "y"})); b != a {
		t.Errorf("the same spec with other metadata: %s, want %s", b, a)
	}
	if b := change(run("u1", "2", nil)); b == a {
		t.Errorf("another spec names the same change %s", a)
	}
	if b := change(run("u2", "1", nil)); b == a {
		t.Errorf("another run (uid) names the same change %s", a)
	}
	if b := change(run("", "1", nil)); b != "" {
		t.Errorf("a run without a uid names change %s, want none", b)
	}
}
