// Package ledger owns every write of a ChangeGroup's admission ledger (status.activeRuns, and the
// counts of the runs that left it, status.finished). The webhook, the run controller and the
// changegroup controller all go through it, so the group's resourceVersion (the update token)
// changes with every admission-relevant event.
//
// Reads are live (an uncached reader): the ledger is never rebuilt from an informer cache, which could
// be stale and lower a count.
package ledger

import (
	"context"
	"fmt"
	"slices"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

// ConflictError says that a group's token no longer matches: another request changed it first.
type ConflictError struct {
	Group  string
	Reason string
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("change group %q: %s", e.Group, e.Reason)
}

// Ledger writes change-group ledgers.
type Ledger struct {
	// Reader reads live from the apiserver (a manager's APIReader).
	Reader client.Reader
	// Writer writes to the apiserver.
	Writer client.Client
}

// Admit records the run as active in each group, creating the groups that do not exist yet.
// With tokens (group name -> resourceVersion) each write is a compare-and-swap at that version for
// the request asking for change (see TokenSwap), and a mismatch is a ConflictError; without tokens
// (nil map) it retries on conflict. When a later group fails, the groups already written are
// released again so nothing is half-admitted.
func (l *Ledger) Admit(ctx context.Context, namespace, run string, groups []string, tokens map[string]string, change string) error {
	var done []string
	for _, g := range groups {
		var err error
		if tokens != nil {
			err = l.compareAndSwap(ctx, namespace, g, rsv1.TokenSwap{ResourceVersion: tokens[g], Run: run, Change: change},
				func(st *rsv1.ChangeGroupStatus) { AddRun(st, run) },
				func(st *rsv1.ChangeGroupStatus) bool { return slices.Contains(st.ActiveRuns, run) })
		} else {
			err = l.update(ctx, namespace, g, true, func(st *rsv1.ChangeGroupStatus) bool { return AddRun(st, run) })
		}
		if err != nil {
			if rerr := l.Release(ctx, namespace, run, done); rerr != nil {
				err = fmt.Errorf("%w (and undoing the admission failed: %v)", err, rerr)
			}
			return err
		}
		done = append(done, g)
	}
	return nil
}

// Touch bumps each group at the token's version without changing what it counts: the
// compare-and-swap of a request that carries a token and does not start the run (a suspended create,
// an approval, a stop, any other change). The groups are written one by one: when a later group
// conflicts, the earlier ones stay bumped, which spends their tokens but changes no count, so other
// holders of those tokens only have to read them again.
func (l *Ledger) Touch(ctx context.Context, namespace, run string, groups []string, tokens map[string]string, change string) error {
	for _, g := range groups {
		swap := rsv1.TokenSwap{ResourceVersion: tokens[g], Run: run, Change: change}
		if err := l.compareAndSwap(ctx, namespace, g, swap, func(*rsv1.ChangeGroupStatus) {}, nil); err != nil {
			return err
		}
	}
	return nil
}

// Release removes the run from each group's active runs without counting it: the undo of an
// admission. Missing groups are fine.
func (l *Ledger) Release(ctx context.Context, namespace, run string, groups []string) error {
	return l.leave(ctx, namespace, run, groups, func(*rsv1.ChangeGroupStatus) {})
}

// Finish removes the run from each group's active runs for good and counts it by result in
// status.finished, in the same write: counting costs no write and no change of the token of its
// own. A group where the run is not active (a retry after the run was counted there, or a run
// never admitted) is not written, so each group counts a run at most once, and exactly once when
// its caller retries until it succeeds. A result not known yet counts as Stopped: a run leaves
// before its end only when it is deleted, which stops it. Missing groups are fine.
func (l *Ledger) Finish(ctx context.Context, namespace, run string, groups []string, result rsv1.RunResult) error {
	return l.leave(ctx, namespace, run, groups, func(st *rsv1.ChangeGroupStatus) { Count(&st.Finished, result) })
}

// Count adds one run of the given result to f (Stopped when the result is not known yet).
func Count(f *rsv1.FinishedRuns, result rsv1.RunResult) {
	switch result {
	case rsv1.RunResultSuccess:
		f.Success++
	case rsv1.RunResultFailed:
		f.Failed++
	default:
		f.Stopped++
	}
}

// leave removes the run from each group's active runs, applying also to a group it leaves in
// the same write.
func (l *Ledger) leave(ctx context.Context, namespace, run string, groups []string, also func(*rsv1.ChangeGroupStatus)) error {
	for _, g := range groups {
		err := l.update(ctx, namespace, g, false, func(st *rsv1.ChangeGroupStatus) bool {
			i := slices.Index(st.ActiveRuns, run)
			if i < 0 {
				return false
			}
			st.ActiveRuns = slices.Delete(st.ActiveRuns, i, i+1)
			also(st)
			return true
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// Mutate applies change to the group's status at the given copy's resourceVersion (which may come
// from a cache): on conflict nothing is written and the caller retries with a fresher copy. change
// reports whether it changed anything; nothing is written when it did not.
func (l *Ledger) Mutate(ctx context.Context, cg *rsv1.ChangeGroup, change func(*rsv1.ChangeGroupStatus) bool) error {
	st := cg.Status.DeepCopy()
	if !change(st) {
		return nil
	}
	return l.writeStatus(ctx, cg, st)
}

// AddRun adds run to the status's active runs; it reports whether it was not there yet.
func AddRun(st *rsv1.ChangeGroupStatus, run string) bool {
	if slices.Contains(st.ActiveRuns, run) {
		return false
	}
	st.ActiveRuns = append(st.ActiveRuns, run)
	return true
}

// backoff spreads retries of many writers contending on one group.
var backoff = wait.Backoff{Steps: 30, Duration: 5 * time.Millisecond, Factor: 1.5, Jitter: 1, Cap: 500 * time.Millisecond}

func retriable(err error) bool { return apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) }

// compareAndSwap applies change to the group's status at the resourceVersion of swap, and records
// swap among the group's recent ones. An empty resourceVersion means the group must not exist yet.
// A swap among the recent ones was made already, for the same request asked about again: it is done
// when its change still holds (done; nil: always), and a conflict when the ledger undid it since (an
// admission released again, a phantom entry dropped).
func (l *Ledger) compareAndSwap(ctx context.Context, namespace, group string, swap rsv1.TokenSwap, change func(*rsv1.ChangeGroupStatus), done func(*rsv1.ChangeGroupStatus) bool) error {
	cg := &rsv1.ChangeGroup{ObjectMeta: metav1.ObjectMeta{Name: group, Namespace: namespace}}
	rv := swap.ResourceVersion
	created := false
	if rv == "" {
		err := l.Writer.Create(ctx, cg)
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("creating change group %s: %w", group, err)
		}
		created = err == nil
	}
	if !created {
		if err := l.Reader.Get(ctx, types.NamespacedName{Namespace: namespace, Name: group}, cg); apierrors.IsNotFound(err) {
			return &ConflictError{Group: group, Reason: "the group of the update token no longer exists; read the token again"}
		} else if err != nil {
			return fmt.Errorf("reading change group %s: %w", group, err)
		}
		switch {
		case swapped(cg, swap) && (done == nil || done(&cg.Status)):
			return nil
		case swapped(cg, swap):
			return &ConflictError{Group: group, Reason: "the update token was spent by this same request, whose admission was undone since; read the token again"}
		case rv == "":
			return &ConflictError{Group: group, Reason: "the update token says the group does not exist, but it was created meanwhile; read the token again"}
		case cg.ResourceVersion != rv:
			return &ConflictError{Group: group, Reason: fmt.Sprintf("the update token is stale (group changed from version %s to %s); read the token again", rv, cg.ResourceVersion)}
		}
	}
	st := cg.Status.DeepCopy()
	change(st)
	st.RecentSwaps = append(st.RecentSwaps, swap)
	st.RecentSwaps = st.RecentSwaps[max(0, len(st.RecentSwaps)-maxRecentSwaps):]
	err := l.writeStatus(ctx, cg, st)
	if apierrors.IsConflict(err) {
		return &ConflictError{Group: group, Reason: "another request changed the group with the same update token first; read the token again"}
	}
	return err
}

// maxRecentSwaps bounds the swaps a group remembers: enough for a request's second ask to find its
// own after other requests swapped in between (schedulers racing on one group), a few hundred bytes.
const maxRecentSwaps = 8

// swapped reports whether swap is among the group's recent compare-and-swaps: the same change of the
// same run at the same token, made already. A swap that names no change is never the same request.
// Ledger writes since (counts, other swaps) keep it: a token is spent by one request, whoever wrote
// the group after it.
func swapped(cg *rsv1.ChangeGroup, swap rsv1.TokenSwap) bool {
	return swap.Change != "" && slices.Contains(cg.Status.RecentSwaps, swap)
}

// update applies change to a live copy of the group, retrying on conflict; create says whether a
// missing group is created (admission) or ignored (release).
func (l *Ledger) update(ctx context.Context, namespace, group string, create bool, change func(*rsv1.ChangeGroupStatus) bool) error {
	return retry.OnError(backoff, retriable, func() error {
		cg := &rsv1.ChangeGroup{}
		err := l.Reader.Get(ctx, types.NamespacedName{Namespace: namespace, Name: group}, cg)
		switch {
		case apierrors.IsNotFound(err) && !create:
			return nil
		case apierrors.IsNotFound(err):
			cg = &rsv1.ChangeGroup{ObjectMeta: metav1.ObjectMeta{Name: group, Namespace: namespace}}
			if err := l.Writer.Create(ctx, cg); err != nil && !apierrors.IsAlreadyExists(err) {
				return fmt.Errorf("creating change group %s: %w", group, err)
			} else if err != nil {
				return err // AlreadyExists: someone created it meanwhile; retry reads it
			}
		case err != nil:
			return fmt.Errorf("reading change group %s: %w", group, err)
		}
		st := cg.Status.DeepCopy()
		if !change(st) {
			return nil
		}
		return l.writeStatus(ctx, cg, st)
	})
}

// writeStatus writes st as cg's status at cg's resourceVersion, bumping the sequence so that every
// write gives a new token.
func (l *Ledger) writeStatus(ctx context.Context, cg *rsv1.ChangeGroup, st *rsv1.ChangeGroupStatus) error {
	st.Sequence++
	st.Active = int32(len(st.ActiveRuns))
	out := cg.DeepCopy()
	out.Status = *st
	if err := l.Writer.Status().Update(ctx, out); err != nil {
		return err
	}
	*cg = *out
	return nil
}
