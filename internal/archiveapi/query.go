package archiveapi

import (
	"fmt"
	"slices"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metainternalversion "k8s.io/apimachinery/pkg/apis/meta/internalversion"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"

	arv1 "runservice.dev/runservice/api/archive/v1alpha1"
	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/archive"
)

// The values the phase and result labels of an archived run can have: it is final.
var (
	archivedPhases  = []string{string(rsv1.RunPhaseFinished), string(rsv1.RunPhaseCancelled), string(rsv1.RunPhaseSetupError)}
	archivedResults = []string{string(rsv1.RunResultSuccess), string(rsv1.RunResultFailed), string(rsv1.RunResultStopped), string(rsv1.RunResultUnknown)}
)

// selectableLabels says which label selectors work, for the errors that refuse the others.
var selectableLabels = fmt.Sprintf("archived runs are selected by %s<group> (in that change group), %s=<%s> and %s=<%s> only",
	arv1.LabelChangeGroupPrefix, arv1.LabelPhase, strings.Join(archivedPhases, "|"), arv1.LabelResult, strings.Join(archivedResults, "|"))

// Field selectors of archivedruns. The index keeps no other field, and a field selector has no
// range operator for creation times.
const (
	fieldName      = "metadata.name"
	fieldNamespace = "metadata.namespace"
)

// maxPage bounds a page of a list, which the index would otherwise read to its end: millions of
// runs. A client that asks for more, or for no limit, gets this many and a continue token (the
// API lets a server return fewer than the limit; kubectl pages by 500).
const maxPage = 500

// listQuery is what a list request asks of the index.
type listQuery struct {
	Query
	// Name, from a metadata.name field selector: the runs of that name only, read with Index.Get.
	Name string
	// Unlimited: the client set no limit, and may not follow continue tokens.
	Unlimited bool
}

// queryFor turns a list request in namespace ("" for all) into the index's query, or a 400 that
// names what it cannot serve.
func queryFor(namespace string, opts *metainternalversion.ListOptions) (listQuery, error) {
	q := listQuery{Query: Query{Namespace: namespace, Limit: maxPage}, Unlimited: true}
	if opts == nil {
		return q, nil
	}
	if opts.Limit < 0 {
		return q, apierrors.NewBadRequest(fmt.Sprintf("limit %d: must not be negative", opts.Limit))
	}
	if opts.Limit > 0 {
		q.Limit, q.Unlimited = int(min(opts.Limit, maxPage)), false
	}
	q.Continue = opts.Continue
	if err := q.labels(opts.LabelSelector); err != nil {
		return q, err
	}
	if err := q.fields(opts.FieldSelector); err != nil {
		return q, err
	}
	if q.Name != "" && q.Namespace == "" {
		return q, apierrors.NewBadRequest(fieldName + ": a list by name is of one namespace; give it (-n, or " + fieldNamespace + ")")
	}
	if q.Name != "" && q.Continue != "" {
		return q, apierrors.NewBadRequest("continue: a list by " + fieldName + " is never paged, so no continue token is valid for it")
	}
	return q, nil
}

func (q *listQuery) labels(sel labels.Selector) error {
	if sel == nil {
		return nil
	}
	reqs, selectable := sel.Requirements()
	if !selectable {
		return apierrors.NewBadRequest(fmt.Sprintf("label selector %q: %s", sel.String(), selectableLabels))
	}
	for _, r := range reqs {
		key, op, values := r.Key(), r.Operator(), r.ValuesUnsorted()
		equals := op == selection.Equals || op == selection.DoubleEquals
		switch {
		case strings.HasPrefix(key, arv1.LabelChangeGroupPrefix):
			// The label's value is always "": exists and = "" mean the same.
			if op != selection.Exists && !(equals && values[0] == "") {
				return apierrors.NewBadRequest(fmt.Sprintf("label selector %q: %s<group> selects by existence only (-l %s<group>)",
					r.String(), arv1.LabelChangeGroupPrefix, arv1.LabelChangeGroupPrefix))
			}
			if g := strings.TrimPrefix(key, arv1.LabelChangeGroupPrefix); !slices.Contains(q.ChangeGroups, g) {
				q.ChangeGroups = append(q.ChangeGroups, g)
			}
		case key == arv1.LabelPhase:
			if err := setOnce(&q.Phase, r, equals, archivedPhases); err != nil {
				return err
			}
		case key == arv1.LabelResult:
			if err := setOnce(&q.Result, r, equals, archivedResults); err != nil {
				return err
			}
		default:
			return apierrors.NewBadRequest(fmt.Sprintf("label selector %q: %s is not a selectable label; %s", r.String(), key, selectableLabels))
		}
	}
	return nil
}

// setOnce sets *dst to the value of an equality requirement r whose value is one of allowed.
func setOnce(dst *string, r labels.Requirement, equals bool, allowed []string) error {
	if !equals {
		return apierrors.NewBadRequest(fmt.Sprintf("label selector %q: %s selects by equality only (%s=<value>)", r.String(), r.Key(), r.Key()))
	}
	v := r.ValuesUnsorted()[0]
	if !slices.Contains(allowed, v) {
		return apierrors.NewBadRequest(fmt.Sprintf("label selector %q: an archived run's %s is one of %s", r.String(), r.Key(), strings.Join(allowed, ", ")))
	}
	if *dst != "" && *dst != v {
		return apierrors.NewBadRequest(fmt.Sprintf("label selector: %s=%s and %s=%s select nothing; give one", r.Key(), *dst, r.Key(), v))
	}
	*dst = v
	return nil
}

func (q *listQuery) fields(sel fields.Selector) error {
	if sel == nil {
		return nil
	}
	for _, r := range sel.Requirements() {
		if r.Operator != selection.Equals && r.Operator != selection.DoubleEquals {
			return apierrors.NewBadRequest(fmt.Sprintf("field selector %q: archived runs are selected by %s=<name> and %s=<namespace> only", sel.String(), fieldName, fieldNamespace))
		}
		switch r.Field {
		case fieldName:
			if q.Name != "" && q.Name != r.Value {
				return apierrors.NewBadRequest(fmt.Sprintf("field selector %q: two names select nothing; give one", sel.String()))
			}
			q.Name = r.Value
		case fieldNamespace:
			if q.Namespace != "" && q.Namespace != r.Value {
				return apierrors.NewBadRequest(fmt.Sprintf("field selector %q: the request is for namespace %q", sel.String(), q.Namespace))
			}
			q.Namespace = r.Value
		default:
			return apierrors.NewBadRequest(fieldLabelError(r.Field))
		}
	}
	return nil
}

// fieldLabelError refuses a field selector the index cannot answer.
func fieldLabelError(field string) string {
	return fmt.Sprintf("field selector %s: archived runs are selected by %s and %s only (their change groups, phase and result by label: %s)",
		field, fieldName, fieldNamespace, selectableLabels)
}

// convertFieldLabel is the scheme's field label conversion for ArchivedRun: the request handler
// refuses a field it returns an error for, before the list reaches the storage.
func convertFieldLabel(label, value string) (string, string, error) {
	switch label {
	case fieldName, fieldNamespace:
		return label, value, nil
	}
	return "", "", fmt.Errorf("%s", fieldLabelError(label))
}

// matches reports whether e meets q's conditions other than the namespace and paging: what a list by
// name checks of the entries Index.Get returns.
func (q *listQuery) matches(e *archive.Entry) bool {
	if e.Deleted || (q.Phase != "" && e.Phase != q.Phase) || (q.Result != "" && e.Result != q.Result) {
		return false
	}
	for _, g := range q.ChangeGroups {
		if !slices.Contains(e.ChangeGroups, g) {
			return false
		}
	}
	return true
}
